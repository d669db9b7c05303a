"""What the storage GC reads and writes: versions, deltas and who uses them; collection marks; the blob lock.

The blob lock orders the GC's deletes against publishing (see :mod:`server.core.gc`): a publish
holds it shared while it checks its blobs and inserts its row, the GC exclusively while it decides
and deletes. PostgreSQL: a transaction-scoped advisory lock. SQLite serialises writers, so a
publish (which writes first) and the GC (whose first statement renews its lease: a write) exclude
each other without one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from ..db.models import ACTIVE_STATES, Delta, Device, Model, ModelVersion, Rollout
from .delta_rows import COLLECTED

_BLOB_LOCK = 0x07A5B10B  # arbitrary, fixed: "the OTA blob store"


@dataclass(frozen=True, slots=True)
class VersionFacts:
    id: int
    model: str
    model_id: int
    version: int
    revoked_at: datetime | None
    unneeded_since: datetime | None
    collected_at: datetime | None
    payload_sha256: str
    payload_length: int
    onnx_sha256: str
    onnx_length: int


@dataclass(frozen=True, slots=True)
class DeltaFacts:
    id: int
    model_id: int
    from_version: int
    to_version: int
    status: str
    sha256: str | None
    length: int | None
    collected_at: datetime | None


@dataclass(frozen=True)
class Facts:
    """Everything that decides whether a version is still needed, read in one transaction."""

    versions: list[VersionFacts]
    deltas: list[DeltaFacts]
    baselines: dict[int, int | None]  # model id → baseline version
    rollouts: dict[int, tuple[int, int]]  # model id → (active rollout id, its version)
    installed: dict[tuple[str, int], int]  # (model name, version) → devices running it
    previous: dict[tuple[str, int], int]  # (model name, version) → devices holding it in their other slot


def load_facts(session: Session) -> Facts:
    versions = [
        VersionFacts(
            id=v.id,
            model=name,
            model_id=v.model_id,
            version=v.version,
            revoked_at=v.revoked_at,
            unneeded_since=v.unneeded_since,
            collected_at=v.collected_at,
            payload_sha256=v.payload_sha256,
            payload_length=v.payload_length,
            onnx_sha256=v.onnx_sha256,
            onnx_length=v.onnx_length,
        )
        for v, name in session.execute(
            select(ModelVersion, Model.name)
            .join(Model, Model.id == ModelVersion.model_id)
            .order_by(Model.name, ModelVersion.version)
        )
    ]
    deltas = [
        DeltaFacts(d.id, d.model_id, d.from_version, d.to_version, d.status, d.sha256, d.length, d.collected_at)
        for d in session.scalars(select(Delta).order_by(Delta.model_id, Delta.to_version, Delta.from_version))
    ]
    baselines = {mid: b for mid, b in session.execute(select(Model.id, Model.baseline_version))}
    rollouts = {
        mid: (rid, v)
        for mid, rid, v in session.execute(
            select(Rollout.model_id, Rollout.id, Rollout.version).where(Rollout.state.in_(ACTIVE_STATES))
        )
    }
    return Facts(
        versions=versions,
        deltas=deltas,
        baselines=baselines,
        rollouts=rollouts,
        installed=_devices_by(session, Device.installed_version),
        previous=_devices_by(session, Device.previous_version),
    )


def _devices_by(session: Session, column: object) -> dict[tuple[str, int], int]:
    rows = session.execute(
        select(Device.model_name, column, func.count())  # type: ignore[call-overload]
        .where(column.isnot(None))  # type: ignore[attr-defined]
        .group_by(Device.model_name, column)
    )
    return {(model, int(version)): int(n) for model, version, n in rows}


def mark_unneeded(session: Session, *, version_ids: Collection[int], at: datetime) -> None:
    """Stamp when versions were first found collectable (a stamp already there is kept)."""
    for chunk in _chunks(version_ids):
        session.execute(
            update(ModelVersion)
            .where(
                ModelVersion.id.in_(chunk), ModelVersion.unneeded_since.is_(None), ModelVersion.collected_at.is_(None)
            )
            .values(unneeded_since=at)
            .execution_options(synchronize_session=False)
        )


def clear_unneeded(session: Session, *, version_ids: Collection[int]) -> None:
    """Versions needed again (a device reported one) start their grace period over next time."""
    for chunk in _chunks(version_ids):
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id.in_(chunk), ModelVersion.collected_at.is_(None))
            .values(unneeded_since=None)
            .execution_options(synchronize_session=False)
        )


def collect_versions(session: Session, *, version_ids: Collection[int], at: datetime) -> None:
    for chunk in _chunks(version_ids):
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id.in_(chunk), ModelVersion.collected_at.is_(None))
            .values(collected_at=at)
            .execution_options(synchronize_session=False)
        )


def collect_deltas(session: Session, *, delta_ids: Collection[int], at: datetime) -> None:
    """Status `collected` (no process offers it again) and the time; sha256 and length stay as history."""
    for chunk in _chunks(delta_ids):
        session.execute(
            update(Delta)
            .where(Delta.id.in_(chunk), Delta.collected_at.is_(None))
            .values(status=COLLECTED, collected_at=at)
            .execution_options(synchronize_session=False)
        )


def live_blobs(session: Session) -> set[str]:
    """Every blob a version or delta that is not collected names: never to be deleted."""
    out: set[str] = set()
    for payload, onnx in session.execute(
        select(ModelVersion.payload_sha256, ModelVersion.onnx_sha256).where(ModelVersion.collected_at.is_(None))
    ):
        out.update((payload, onnx))
    out.update(
        sha
        for sha in session.scalars(select(Delta.sha256).where(Delta.collected_at.is_(None), Delta.sha256.isnot(None)))
        if sha is not None
    )
    return out


@dataclass(frozen=True, slots=True)
class CollectedBlob:
    what: str  # "payload of shapes v2", "delta 2→4 of shapes"
    collected_at: datetime


def collected_blob(session: Session, *, sha256: str) -> CollectedBlob | None:
    """What a collected blob was, if a collected version or delta names it (for a clear 410)."""
    row = session.execute(
        select(Model.name, ModelVersion.version, ModelVersion.payload_sha256, ModelVersion.collected_at)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(
            ModelVersion.collected_at.isnot(None),
            (ModelVersion.payload_sha256 == sha256) | (ModelVersion.onnx_sha256 == sha256),
        )
        .limit(1)
    ).first()
    if row is not None:
        kind = "payload" if row.payload_sha256 == sha256 else "ONNX model"
        return CollectedBlob(f"the {kind} of {row.name} v{row.version}", row.collected_at)
    delta = session.execute(
        select(Model.name, Delta.from_version, Delta.to_version, Delta.collected_at)
        .join(Model, Model.id == Delta.model_id)
        .where(Delta.collected_at.isnot(None), Delta.sha256 == sha256)
        .limit(1)
    ).first()
    if delta is not None and delta.collected_at is not None:
        return CollectedBlob(f"the delta {delta.from_version}→{delta.to_version} of {delta.name}", delta.collected_at)
    return None


def lock_blobs(session: Session, *, exclusive: bool) -> None:
    """Hold the blob lock until the transaction ends (PostgreSQL; see the module docstring for SQLite)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    session.execute(text(f"SELECT {fn}(:key)"), {"key": _BLOB_LOCK})


def _chunks(ids: Collection[int], size: int = 500) -> list[list[int]]:
    items = sorted(ids)
    return [items[i : i + size] for i in range(0, len(items), size)]
