"""Rollouts: the only module with SQLAlchemy statements for rollouts, their history, devices and metrics.

Every state change goes through :func:`compare_and_set`: an ``UPDATE … WHERE id = :id AND
revision = :seen`` that bumps the revision. Exactly one of several processes that read the same
revision can win it, on PostgreSQL and SQLite alike, without holding a lock while deciding.
The one-active-rollout-per-model rule is the partial unique index ``uq_rollouts_active_model``;
its violation is translated here into :class:`RolloutActiveError`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as Session  # re-exported: core annotates with it without importing sqlalchemy
from sqlalchemy.orm import aliased

from ..db.models import (
    ACTIVE_STATES,
    Device,
    DeviceEvent,
    DeviceLabel,
    Model,
    ModelVersion,
    Rollout,
    RolloutDevice,
    RolloutHistory,
    RolloutMetric,
)
from ..errors import RolloutActiveError
from ._upsert import insert_many_ignore, insert_or_add

__all__ = ["ACTIVE_STATES", "ActiveRollout", "DeviceRow", "Session"]


@dataclass(frozen=True, slots=True)
class ActiveRollout:
    """An active rollout with what the poll path needs of its version row."""

    rollout: Rollout
    model: str
    version_id: int
    revoked: bool
    baseline: int | None
    revoked_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_pk: int
    offered_at: datetime
    installed_at: datetime | None
    failed_at: datetime | None
    reason: str | None


def create_rollout(session: Session, *, rollout: Rollout) -> Rollout:
    """Insert a rollout; :class:`RolloutActiveError` if its model already has an active one."""
    session.add(rollout)
    try:
        session.flush()
    except sa_exc.IntegrityError as e:  # the transaction is spoilt; the caller's session rolls it back
        raise RolloutActiveError("the model already has an active rollout; pause, abort or finish it first") from e
    return rollout


def get_rollout(session: Session, *, rollout_id: int) -> Rollout | None:
    return session.get(Rollout, rollout_id, populate_existing=True)


def model_name_of(session: Session, *, model_id: int) -> str:
    return session.scalars(select(Model.name).where(Model.id == model_id)).one()


def list_rollouts(
    session: Session, *, model_id: int | None = None, state: str | None = None, limit: int = 50
) -> list[Rollout]:
    """Newest first."""
    stmt = select(Rollout)
    if model_id is not None:
        stmt = stmt.where(Rollout.model_id == model_id)
    if state is not None:
        stmt = stmt.where(Rollout.state == state)
    return list(session.scalars(stmt.order_by(Rollout.id.desc()).limit(limit)))


def active_rollouts(session: Session) -> list[ActiveRollout]:
    """Every active rollout with its model's name, its version row and the model's baseline (one query)."""
    rows = session.execute(
        select(
            Rollout,
            Model.name,
            ModelVersion.id,
            ModelVersion.revoked_at,
            Model.baseline_version,
            ModelVersion.revoked_reason,
        )
        .join(Model, Model.id == Rollout.model_id)
        .join(ModelVersion, (ModelVersion.model_id == Rollout.model_id) & (ModelVersion.version == Rollout.version))
        .where(Rollout.state.in_(ACTIVE_STATES))
        .order_by(Rollout.id)
    )
    return [
        ActiveRollout(
            rollout=r,
            model=name,
            version_id=vid,
            revoked=revoked_at is not None,
            baseline=baseline,
            revoked_reason=why,
        )
        for r, name, vid, revoked_at, baseline, why in rows
    ]


def active_for_model(session: Session, *, model_name: str) -> ActiveRollout | None:
    """The model's active rollout (the partial unique index allows at most one)."""
    rows = session.execute(
        select(Rollout, Model.name, ModelVersion.id, ModelVersion.revoked_at, Model.baseline_version)
        .join(Model, Model.id == Rollout.model_id)
        .join(ModelVersion, (ModelVersion.model_id == Rollout.model_id) & (ModelVersion.version == Rollout.version))
        .where(Model.name == model_name, Rollout.state.in_(ACTIVE_STATES))
    ).first()
    if rows is None:
        return None
    r, name, vid, revoked_at, baseline = rows
    return ActiveRollout(rollout=r, model=name, version_id=vid, revoked=revoked_at is not None, baseline=baseline)


def rollout_of_version(session: Session, *, model_name: str, version: int) -> Rollout | None:
    """The latest rollout of this version that is active or completed (what install reports count toward)."""
    return session.scalars(
        select(Rollout)
        .join(Model, Model.id == Rollout.model_id)
        .where(Model.name == model_name, Rollout.version == version, Rollout.state.in_((*ACTIVE_STATES, "completed")))
        .order_by(Rollout.id.desc())
        .limit(1)
    ).first()


def compare_and_set(session: Session, *, rollout_id: int, seen_revision: int, values: Mapping[str, Any]) -> bool:
    """Apply `values` if the rollout is still at `seen_revision` (and bump it); False if someone was first."""
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.revision == seen_revision)
        .values(**values, revision=Rollout.revision + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def add_history(
    session: Session, *, rollout_id: int, at: datetime, event: str, stage: int, detail: str | None, by: str
) -> None:
    session.add(
        RolloutHistory(
            rollout_id=rollout_id,
            at=at,
            event=event,
            stage=stage,
            detail=detail[:1000] if detail else None,
            by=by[:64],
        )
    )
    session.flush()


def history(session: Session, *, rollout_id: int) -> list[RolloutHistory]:
    return list(
        session.scalars(
            select(RolloutHistory).where(RolloutHistory.rollout_id == rollout_id).order_by(RolloutHistory.id)
        )
    )


def set_baseline(session: Session, *, model_id: int, version: int) -> None:
    session.execute(
        update(Model)
        .where(Model.id == model_id)
        .values(baseline_version=version)
        .execution_options(synchronize_session=False)
    )


def model_devices(session: Session, *, model_name: str, selector: Mapping[str, str]) -> list[tuple[int, str]]:
    """(pk, device_id) of every device of the model whose labels match the selector (all of them)."""
    stmt = select(Device.id, Device.device_id).where(Device.model_name == model_name)
    for key, value in sorted(selector.items()):
        label = aliased(DeviceLabel)
        stmt = stmt.where(exists().where(and_(label.device_pk == Device.id, label.key == key, label.value == value)))
    return [(pk, device_id) for pk, device_id in session.execute(stmt.order_by(Device.id))]


def device_labels(session: Session, *, device_pk: int) -> dict[str, str]:
    rows = session.execute(select(DeviceLabel.key, DeviceLabel.value).where(DeviceLabel.device_pk == device_pk))
    return {k: v for k, v in rows}


def device_rows(session: Session, *, rollout_id: int) -> list[DeviceRow]:
    rows = session.execute(
        select(
            RolloutDevice.device_pk,
            RolloutDevice.offered_at,
            RolloutDevice.installed_at,
            RolloutDevice.failed_at,
            RolloutDevice.reason,
        ).where(RolloutDevice.rollout_id == rollout_id)
    )
    return [DeviceRow(*row) for row in rows]


def record_offers(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert (rollout_id, device_pk, stage, offered_at[, installed_at]) rows unless the device has one."""
    for i in range(0, len(rows), 1000):
        insert_many_ignore(session, RolloutDevice.__table__, [dict(r) for r in rows[i : i + 1000]])  # type: ignore[arg-type]


def mark_installed(session: Session, *, rollout_id: int, device_pk: int, stage: int, at: datetime) -> None:
    """The device installed the rollout's version (a row is created if its offer is still buffered)."""
    record_offers(session, rows=[{"rollout_id": rollout_id, "device_pk": device_pk, "stage": stage, "offered_at": at}])
    session.execute(
        update(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            RolloutDevice.device_pk == device_pk,
            RolloutDevice.installed_at.is_(None),
        )
        .values(installed_at=at)
        .execution_options(synchronize_session=False)
    )


def mark_failed(
    session: Session,
    *,
    rollout_id: int,
    device_pk: int,
    stage: int,
    at: datetime,
    reason: str | None,
    replaces: Collection[str] = (),
) -> bool:
    """The device refused or rolled back the rollout's version; True the first time for this device.

    Only the first failure is kept, unless the one recorded has a reason in `replaces` (a passing
    fault of the device, which a later failure supersedes).
    """
    record_offers(session, rows=[{"rollout_id": rollout_id, "device_pk": device_pk, "stage": stage, "offered_at": at}])
    open_to: ColumnElement[bool] = RolloutDevice.failed_at.is_(None)
    if replaces:
        open_to = or_(open_to, RolloutDevice.reason.in_(list(replaces)))
    result = session.execute(
        update(RolloutDevice)
        .where(RolloutDevice.rollout_id == rollout_id, RolloutDevice.device_pk == device_pk, open_to)
        .values(failed_at=at, reason=reason[:500] if reason else None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def add_metrics(
    session: Session,
    *,
    rollout_id: int,
    version: int,
    samples: int = 0,
    p50_sum: float = 0.0,
    p95_sum: float = 0.0,
    confidence_sum: float = 0.0,
    validation_failures: int = 0,
) -> None:
    """Add to the running sums of one (rollout, version), creating the row on first use."""
    insert_or_add(
        session,
        RolloutMetric.__table__,  # type: ignore[arg-type]
        {"rollout_id": rollout_id, "version": version},
        {
            "samples": samples,
            "p50_sum": p50_sum,
            "p95_sum": p95_sum,
            "confidence_sum": confidence_sum,
            "validation_failures": validation_failures,
        },
    )


def metric_sums(session: Session, *, rollout_id: int) -> dict[int, RolloutMetric]:
    rows = session.scalars(select(RolloutMetric).where(RolloutMetric.rollout_id == rollout_id))
    return {m.version: m for m in rows}


def last_event_id(session: Session) -> int:
    """The device event log's highest id (0 when empty): where a new rollout's metrics begin."""
    return int(session.scalar(select(func.max(DeviceEvent.id))) or 0)


def metric_events(
    session: Session,
    *,
    model_name: str,
    versions: Sequence[int],
    after_id: int,
    since: datetime,
    until: datetime | None,
) -> list[tuple[int, int, int, dict[str, Any] | None]]:
    """(id, device pk, version, metrics) of the model's devices' `metrics` events about `versions`,
    with id above `after_id`, received from `since` (to `until`), in id order (a range of the primary key)."""
    stmt = (
        select(DeviceEvent.id, DeviceEvent.device_pk, DeviceEvent.version, DeviceEvent.metrics)
        .join(Device, Device.id == DeviceEvent.device_pk)
        .where(
            DeviceEvent.id > after_id,
            DeviceEvent.type == "metrics",
            DeviceEvent.version.in_(list(versions)),
            DeviceEvent.received_at >= since,
            Device.model_name == model_name,
        )
        .order_by(DeviceEvent.id)
    )
    if until is not None:
        stmt = stmt.where(DeviceEvent.received_at <= until)
    return [(i, pk, v, m) for i, pk, v, m in session.execute(stmt)]
