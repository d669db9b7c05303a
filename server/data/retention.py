"""Event retention: the oldest events in id order, their deletion, and the metric summaries kept of them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session

from ..db.models import DeviceEvent, DeviceMetricSummary


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
    """Fold a batch's sums into the (device, version) rows, creating missing ones (only the GC writes these)."""
    if not adds:
        return
    keys = list(adds)
    existing = {
        (s.device_pk, s.version): s
        for i in range(0, len(keys), 500)
        for s in session.scalars(
            select(DeviceMetricSummary).where(
                tuple_(DeviceMetricSummary.device_pk, DeviceMetricSummary.version).in_(keys[i : i + 500])
            )
        )
    }
    for key, add in adds.items():
        assert add.first_at is not None and add.last_at is not None
        row = existing.get(key)
        if row is None:
            session.add(
                DeviceMetricSummary(
                    device_pk=key[0],
                    version=key[1],
                    windows=add.windows,
                    requests=add.requests,
                    p50_sum=add.p50_sum,
                    p95_sum=add.p95_sum,
                    confidence_sum=add.confidence_sum,
                    first_at=add.first_at,
                    last_at=add.last_at,
                )
            )
            continue
        row.windows += add.windows
        row.requests += add.requests
        row.p50_sum += add.p50_sum
        row.p95_sum += add.p95_sum
        row.confidence_sum += add.confidence_sum
        row.first_at = min(row.first_at, add.first_at)
        row.last_at = max(row.last_at, add.last_at)
    session.flush()


def summaries_of(session: Session, *, device_pk: int) -> list[DeviceMetricSummary]:
    return list(
        session.scalars(
            select(DeviceMetricSummary)
            .where(DeviceMetricSummary.device_pk == device_pk)
            .order_by(DeviceMetricSummary.version)
        )
    )
