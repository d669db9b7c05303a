"""The database schema as SQLAlchemy 2 typed models. Alembic (`migrations/`) is the only way it changes.

What each table is for:

- ``models`` / ``model_versions``: the registry. A version keeps the *signed manifest bytes and
  signatures verbatim* (devices must receive exactly what was signed) plus the digests of its
  payload and decoded ONNX blobs, which live in object storage under their sha256.
- ``devices`` / ``device_labels`` / ``device_events``: enrolled devices, their labels (one row per
  key, indexed for ``label=k:v`` filters) and the event log they report.
- ``revoked_tokens``: device tokens are signed, not looked up (see :mod:`server.core.security`), so a
  decommissioned device's token id is listed here until the end of time.
- ``admin_tokens``: admin tokens minted by ``ota-server create-token``, stored as sha256 digests.
- ``revoked_sessions``: dashboard sessions are signed cookies; one signed out is listed here until
  it would have expired anyway (then purged).
- ``deltas``: one row per (model, from, to) pair. Its unique constraint is the *claim* that makes
  sure a delta is computed once, also across server processes sharing the database.
- ``rollouts`` / ``rollout_history`` / ``rollout_devices`` / ``rollout_metrics``: staged rollouts
  (see :mod:`server.core.rollouts`). A partial unique index allows one *active* rollout per model;
  ``revision`` is the compare-and-set counter every state change goes through. ``rollout_devices``
  holds one row per device offered the version (counting), ``rollout_metrics`` running sums of the
  agents' ``metrics`` events per version (the gates read these, never the event log).
- ``trust_documents``: the root and keys documents of the root of trust (:mod:`artifact.trust`),
  stored verbatim (canonical bytes), one row per (kind, version); devices fetch the chain.
- ``device_metric_summaries``: what event retention keeps of the metrics events it deletes;
  ``maintenance_leases``: one ``ota-server gc`` at a time (see :mod:`server.core.gc`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .session import UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# 64-bit ids where a table can outgrow 2^31 rows; SQLite's rowid alias must be INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    baseline_version: Mapped[int | None] = mapped_column(
        Integer, doc="the version of the last completed rollout: what devices outside a rollout are offered"
    )

    versions: Mapped[list[ModelVersion]] = relationship(back_populates="model", lazy="raise")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    manifest_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    signatures: Mapped[str] = mapped_column(Text, doc="canonical JSON list of {keyid, sig}, as uploaded")
    artifact_sha256: Mapped[str] = mapped_column(String(64), doc="sha256 of the uploaded file: idempotent re-upload")
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload_length: Mapped[int] = mapped_column(BigInteger)
    payload_encoding: Mapped[str] = mapped_column(String(32))
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    onnx_length: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(doc="the manifest's created_at")
    expires_at: Mapped[datetime | None] = mapped_column(doc="the manifest's expires_at")
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_by: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    unneeded_since: Mapped[datetime | None] = mapped_column(
        doc="when the storage GC first found it collectable (revoked or superseded, unused); cleared if needed again"
    )
    collected_at: Mapped[datetime | None] = mapped_column(doc="when the storage GC deleted its blobs (the row stays)")

    model: Mapped[Model] = relationship(back_populates="versions", lazy="raise")


class Device(Base):
    __tablename__ = "devices"
    # Never reuse a deleted device's id: its old (signed) token names it.
    __table_args__ = (
        Index(None, "model_name", "installed_version", "id"),
        Index(None, "status", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), unique=True)
    model_name: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column()
    installed_version: Mapped[int | None] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(
        Integer, doc="what it ran before its installed version: the model in its other slot, as far as the server knows"
    )
    status: Mapped[str] = mapped_column(String(16), default="enrolled")
    status_reason: Mapped[str | None] = mapped_column(String(500))
    status_at: Mapped[datetime | None] = mapped_column()
    last_metrics: Mapped[dict[str, Any] | None] = mapped_column()

    labels: Mapped[list[DeviceLabel]] = relationship(
        back_populates="device", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class DeviceLabel(Base):
    __tablename__ = "device_labels"
    __table_args__ = (Index(None, "key", "value", "device_pk"),)

    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))

    device: Mapped[Device] = relationship(back_populates="labels", lazy="raise")


class DeviceEvent(Base):
    __tablename__ = "device_events"
    __table_args__ = (Index(None, "device_pk", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(500))
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    device_time: Mapped[datetime | None] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class RevokedToken(Base):
    __tablename__ = "revoked_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)


class RevokedSession(Base):
    __tablename__ = "revoked_sessions"

    sid: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Delta(Base):
    __tablename__ = "deltas"
    __table_args__ = (UniqueConstraint("model_id", "from_version", "to_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    from_version: Mapped[int] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), doc="pending | ready | oversize | failed | collected")
    sha256: Mapped[str | None] = mapped_column(String(64))
    length: Mapped[int | None] = mapped_column(BigInteger)
    claimed_by: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(String(500))
    collected_at: Mapped[datetime | None] = mapped_column(doc="when the storage GC deleted its blob (status collected)")


# The states in which a rollout holds its model (at most one per model: the partial unique index).
ACTIVE_STATES = ("running", "waiting", "paused")
_ACTIVE = text("state IN ('running', 'waiting', 'paused')")


class Rollout(Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        Index("uq_rollouts_active_model", "model_id", unique=True, postgresql_where=_ACTIVE, sqlite_where=_ACTIVE),
        Index(None, "state", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), doc="running | waiting | paused | completed | aborted")
    reason: Mapped[str | None] = mapped_column(String(500))
    stage: Mapped[int] = mapped_column(Integer, doc="0-based index of the current stage")
    stage_started_at: Mapped[datetime] = mapped_column()
    spec: Mapped[dict[str, Any]] = mapped_column(doc="stages, selector, thresholds, gates, auto_advance, timeout")
    revision: Mapped[int] = mapped_column(Integer, doc="compare-and-set counter: +1 on every change")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutHistory(Base):
    __tablename__ = "rollout_history"
    __table_args__ = (Index(None, "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column()
    event: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int] = mapped_column(Integer, doc="the rollout's stage after the event")
    detail: Mapped[str | None] = mapped_column(String(1000))
    by: Mapped[str] = mapped_column(String(64), doc="'system' (the controller) or the admin token's name")


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer, doc="the stage in which the device was first offered the version")
    offered_at: Mapped[datetime] = mapped_column()
    installed_at: Mapped[datetime | None] = mapped_column()
    failed_at: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(500))


class RolloutMetric(Base):
    __tablename__ = "rollout_metrics"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    samples: Mapped[int] = mapped_column(BigInteger, default=0, doc="inference requests summed over metrics events")
    p50_sum: Mapped[float] = mapped_column(Float, default=0.0, doc="sum of p50_ms × requests")
    p95_sum: Mapped[float] = mapped_column(Float, default=0.0, doc="sum of p95_ms × requests")
    confidence_sum: Mapped[float] = mapped_column(Float, default=0.0, doc="sum of mean_confidence × requests")
    validation_failures: Mapped[int] = mapped_column(
        Integer, default=0, doc="devices that refused it on the golden set"
    )


class TrustDocument(Base):
    __tablename__ = "trust_documents"
    __table_args__ = (UniqueConstraint("kind", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "root" | "keys"
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_by: Mapped[str] = mapped_column(String(64))


class DeviceMetricSummary(Base):
    """What event retention keeps of the ``metrics`` events it deletes: running sums per device and version."""

    __tablename__ = "device_metric_summaries"

    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, doc="the version the metrics were measured on")
    windows: Mapped[int] = mapped_column(BigInteger, default=0, doc="metrics events folded in")
    requests: Mapped[int] = mapped_column(BigInteger, default=0, doc="inference requests over those windows")
    p50_sum: Mapped[float] = mapped_column(Float, default=0.0, doc="sum of p50_ms × requests")
    p95_sum: Mapped[float] = mapped_column(Float, default=0.0, doc="sum of p95_ms × requests")
    confidence_sum: Mapped[float] = mapped_column(Float, default=0.0, doc="sum of mean_confidence × requests")
    first_at: Mapped[datetime] = mapped_column(doc="received time of the oldest event folded in")
    last_at: Mapped[datetime] = mapped_column(doc="received time of the newest event folded in")


class MaintenanceLease(Base):
    """Who runs a maintenance job (``gc``) now: one holder at a time, until ``expires_at`` unless renewed."""

    __tablename__ = "maintenance_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()
