"""Models and versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from ..db.models import Delta, Model, ModelVersion
from ..db.session import utcnow
from ._upsert import insert_ignore


@dataclass(frozen=True, slots=True)
class Head:
    """The version a model offers to every device outside a rollout: its baseline, unless revoked."""

    model: str
    model_id: int
    version_id: int
    version: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    created_at: datetime
    versions: int
    latest_version: int | None
    offered_version: int | None


def get_model(session: Session, *, name: str) -> Model | None:
    return session.scalars(select(Model).where(Model.name == name)).one_or_none()


def lock_or_create_model(session: Session, *, name: str) -> Model:
    """The model row, created if missing, locked until the transaction ends (PostgreSQL; SQLite
    serialises writers anyway) so that two publishes of one model cannot interleave."""
    insert_ignore(session, Model.__table__, {"name": name, "created_at": utcnow()})  # type: ignore[arg-type]
    return session.scalars(select(Model).where(Model.name == name).with_for_update()).one()


def latest_version_number(session: Session, *, model_id: int) -> int | None:
    """Highest version ever published, revoked or not: a new version must be above it."""
    return session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model_id))


def get_version(session: Session, *, model_id: int, version: int) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.version == version)
    ).one_or_none()


def get_version_by_id(session: Session, *, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_versions(session: Session, *, model_id: int) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.version.desc())
        )
    )


def list_models(session: Session) -> list[ModelSummary]:
    counts = (
        select(
            ModelVersion.model_id,
            func.count().label("versions"),
            func.max(ModelVersion.version).label("latest"),
        )
        .group_by(ModelVersion.model_id)
        .subquery()
    )
    baseline = aliased(ModelVersion)
    rows = session.execute(
        select(Model.name, Model.created_at, counts.c.versions, counts.c.latest, baseline.version)
        .outerjoin(counts, counts.c.model_id == Model.id)
        .outerjoin(
            baseline,
            (baseline.model_id == Model.id)
            & (baseline.version == Model.baseline_version)
            & baseline.revoked_at.is_(None),
        )
        .order_by(Model.name)
    )
    return [
        ModelSummary(
            name=r.name,
            created_at=r.created_at,
            versions=r.versions or 0,
            latest_version=r.latest,
            offered_version=r.version,
        )
        for r in rows
    ]


def offered_heads(session: Session) -> dict[str, Head]:
    """Every model's baseline that is not revoked, in one query (the registry view's refresh).

    A revoked baseline offers nothing (never an older version: devices refuse downgrades anyway);
    the next completed rollout sets a new one.
    """
    rows = session.execute(
        select(Model.name, Model.id, ModelVersion.id, ModelVersion.version)
        .join(
            ModelVersion,
            (ModelVersion.model_id == Model.id) & (ModelVersion.version == Model.baseline_version),
        )
        .where(ModelVersion.revoked_at.is_(None))
    )
    return {name: Head(name, model_id, version_id, version) for name, model_id, version_id, version in rows}


def published_versions(session: Session) -> dict[int, frozenset[int]]:
    """Every model's published version numbers (revoked ones included, collected ones not): the delta
    bases that exist."""
    out: dict[int, set[int]] = {}
    rows = session.execute(
        select(ModelVersion.model_id, ModelVersion.version).where(ModelVersion.collected_at.is_(None))
    )
    for model_id, version in rows:
        out.setdefault(model_id, set()).add(version)
    return {model_id: frozenset(versions) for model_id, versions in out.items()}


def add_version(session: Session, *, version: ModelVersion) -> ModelVersion:
    session.add(version)
    session.flush()
    return version


def revoke_version(session: Session, *, version: ModelVersion, reason: str | None) -> bool:
    """Mark a version revoked; False if it already was (the first reason is kept)."""
    if version.revoked_at is not None:
        return False
    version.revoked_at = utcnow()
    version.revoked_reason = reason
    session.flush()
    return True


def live_versions(session: Session) -> list[tuple[str, ModelVersion]]:
    """Every version neither revoked nor collected, with its model's name (model, then version order)."""
    rows = session.execute(
        select(Model.name, ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.revoked_at.is_(None), ModelVersion.collected_at.is_(None))
        .order_by(ModelVersion.model_id, ModelVersion.version)
    )
    return [(name, version) for name, version in rows]


def revoke_if_live(session: Session, *, version_id: int, reason: str, at: datetime) -> bool:
    """Mark a version revoked unless it already is, in one statement: of two processes doing it at
    once, exactly one gets True (and says so); the first reason is kept."""
    result = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == version_id, ModelVersion.revoked_at.is_(None))
        .values(revoked_at=at, revoked_reason=reason[:500])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def model_has_blob(session: Session, *, model: str, sha256: str) -> bool:
    """Whether a version of `model` names the blob as its payload or ONNX, or a delta of `model` is stored under it."""
    of_model = select(Model.id).where(Model.name == model).scalar_subquery()
    version = select(ModelVersion.id).where(
        ModelVersion.model_id == of_model,
        (ModelVersion.payload_sha256 == sha256) | (ModelVersion.onnx_sha256 == sha256),
    )
    delta = select(Delta.id).where(Delta.model_id == of_model, Delta.sha256 == sha256)
    return session.execute(version.union_all(delta).limit(1)).first() is not None
