"""Event retention: the oldest events in id order, their deletion, and the metric summaries kept of them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..db.models import DeviceEvent, DeviceMetricSummary
from ._upsert import insert_or_fold


@dataclass(frozen=True, slots=True)
class OldEvent:
    id: int
    device_pk: int
    type: str
    version: int | None
    metrics: dict[str, Any] | None
    received_at: datetime


@dataclass
class SummaryAdd:
    """What one batch adds to a (device, version) summary."""

    windows: int = 0
    requests: int = 0
    p50_sum: float = 0.0
    p95_sum: float = 0.0
    confidence_sum: float = 0.0
    first_at: datetime | None = None
    last_at: datetime | None = None


def oldest_events(session: Session, *, limit: int) -> list[OldEvent]:
    """The `limit` events with the lowest ids (the primary key's order: no scan, whatever the table's size)."""
    rows = session.execute(
        select(
            DeviceEvent.id,
            DeviceEvent.device_pk,
            DeviceEvent.type,
            DeviceEvent.version,
            DeviceEvent.metrics,
            DeviceEvent.received_at,
        )
        .order_by(DeviceEvent.id)
        .limit(limit)
    )
    return [OldEvent(*row) for row in rows]


def delete_events(session: Session, *, ids: Collection[int]) -> int:
    items = sorted(ids)
    deleted = 0
    for i in range(0, len(items), 1000):
        result = session.execute(
            delete(DeviceEvent)
            .where(DeviceEvent.id.in_(items[i : i + 1000]))
            .execution_options(synchronize_session=False)
        )
        deleted += int(result.rowcount)  # type: ignore[attr-defined]
    return deleted


def count_events_before(session: Session, *, cutoff: datetime) -> int:
    return int(session.scalar(select(func.count()).where(DeviceEvent.received_at < cutoff)) or 0)


def count_events(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(DeviceEvent)) or 0)


def add_summaries(session: Session, *, adds: Mapping[tuple[int, int], SummaryAdd]) -> None:
    """Fold a batch's sums into the (device, version) rows, creating missing ones (one statement per 500)."""
    rows = []
    for (device_pk, version), add in sorted(adds.items()):
        assert add.first_at is not None and add.last_at is not None
        rows.append(
            {
                "device_pk": device_pk,
                "version": version,
                "windows": add.windows,
                "requests": add.requests,
                "p50_sum": add.p50_sum,
                "p95_sum": add.p95_sum,
                "confidence_sum": add.confidence_sum,
                "first_at": add.first_at,
                "last_at": add.last_at,
            }
        )
    insert_or_fold(
        session,
        DeviceMetricSummary.__table__,  # type: ignore[arg-type]
        rows,
        key=("device_pk", "version"),
        add=("windows", "requests", "p50_sum", "p95_sum", "confidence_sum"),
        least=("first_at",),
        greatest=("last_at",),
    )


def summaries_of(session: Session, *, device_pk: int) -> list[DeviceMetricSummary]:
    return list(
        session.scalars(
            select(DeviceMetricSummary)
            .where(DeviceMetricSummary.device_pk == device_pk)
            .order_by(DeviceMetricSummary.version)
        )
    )
