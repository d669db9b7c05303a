"""Wire schemas (pydantic), separate from the database models. Limits here are the input contract."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

import artifact as A

from ..core.rollout_policy import GATE_BOUNDS, spec_problem

MAX_INT = A.MAX_VERSION  # 2**31 - 1: the artifact schema's range, for every version and id
MODEL_NAME = A.MODEL_NAME_PATTERN
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"
SHA256 = A.SHA256_HEX_PATTERN

NO_NUL = r"^[^\x00]*$"  # PostgreSQL stores no NUL character in text: refused here, on every database alike


def _text(max_length: int) -> StringConstraints:
    return StringConstraints(max_length=max_length, pattern=NO_NUL)


ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, _text(255)]
Reason = Annotated[str, _text(500)]  # the string inputs that are stored: no NUL, bounded
Version = Annotated[int, Field(ge=1, le=MAX_INT)]
EventType = Literal["checking", "downloading", "verified", "installed", "failed", "rolled_back", "metrics"]
DeviceStatus = Literal["enrolled", "checking", "downloading", "verified", "installed", "failed", "rolled_back"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- enrollment ---------------------------------------------------------------------------------


class EnrollRequest(_In):
    enrollment_secret: Annotated[str, _text(1024)]
    device_id: DeviceId | None = Field(None, description="chosen by the server when absent")
    model: ModelName
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=32)
    previous_token: Annotated[str, _text(1024)] | None = Field(
        None,
        description="the device's last token (expired, or signed with a retired key): lets an enrolled device "
        "enroll again under its id, keeping its history",
    )


class TokenResponse(BaseModel):
    token: str = Field(description="shown once; the server keeps no copy it could show again")
    expires_at: datetime = Field(description="when the token stops working")
    expires_in: int = Field(description="seconds from now until then (renew halfway: device clocks drift)")


class EnrollResponse(TokenResponse):
    device_id: str
    model: str
    poll_interval: int


# -- events -------------------------------------------------------------------------------------


class Event(_In):
    type: EventType
    version: Annotated[int, Field(ge=0, le=MAX_INT)] | None = Field(
        None, description="the version the event is about (for `metrics`: the installed one)"
    )
    installed_version: Annotated[int, Field(ge=0, le=MAX_INT)] | None = Field(
        None, description="what the device runs now, if it says (e.g. after `rolled_back`)"
    )
    reason: Reason | None = None
    at: datetime | None = Field(None, description="device clock, RFC 3339 with an offset; informative only")
    metrics: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.]{1,64}$")], float] | None = Field(
        None, max_length=32
    )
    # What an agent adds to say more about an install; kept with the event (see `fleet.apply_events`).
    detail: Annotated[str, _text(1000)] | None = Field(None, description="the human message behind `reason`")
    source: Literal["delta", "full"] | None = Field(None, description="how the model was fetched")
    state: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")] | None = None
    bytes: Annotated[int, Field(ge=0, le=2**53)] | None = None
    from_version: Annotated[int, Field(ge=0, le=MAX_INT)] | None = None

    @field_validator("metrics")
    @classmethod
    def _finite(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and not all(math.isfinite(x) for x in v.values()):
            raise ValueError("metrics must be finite numbers")
        return v

    @field_validator("at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("needs a UTC offset (e.g. 2026-01-31T12:00:00Z)")
        try:
            return v.astimezone(UTC)
        except OverflowError as e:
            raise ValueError("is outside the years 1 to 9999 once converted to UTC") from e

    @model_validator(mode="after")
    def _required_fields(self) -> Event:
        if self.type in {"installed", "verified", "downloading"} and self.version is None:
            raise ValueError(f"a {self.type!r} event needs the version it is about")
        if self.type == "failed" and not self.reason:
            raise ValueError("a 'failed' event needs a reason")
        if self.type == "metrics" and not self.metrics:
            raise ValueError("a 'metrics' event needs metrics")
        return self


EventList = Annotated[list[Event], Field(min_length=1, max_length=100)]


class EventBatch(_In):
    events: EventList


class EventsResponse(BaseModel):
    recorded: int
    status: str
    installed_version: int | None


# -- registry -----------------------------------------------------------------------------------


class BlobRef(BaseModel):
    length: int
    sha256: str


class DeltaSummary(BaseModel):
    from_version: int
    status: str
    length: int | None


class VersionSummary(BaseModel):
    model: str
    version: int
    parent_version: int | None
    created_at: datetime
    expires_at: datetime | None
    published_at: datetime
    published_by: str
    payload: BlobRef
    onnx: BlobRef
    artifact_sha256: str
    revoked: bool
    revoked_at: datetime | None
    revoked_reason: str | None
    collected_at: datetime | None = Field(
        None, description="when the storage GC deleted its blobs (revoked or superseded, unused); the row stays"
    )


class VersionDetail(VersionSummary):
    manifest: dict[str, Any]
    manifest_b64: str
    signatures: list[dict[str, str]]
    deltas: list[DeltaSummary]


class ModelOut(BaseModel):
    name: str
    created_at: datetime
    versions: int
    latest_version: int | None
    offered_version: int | None = Field(
        description="the model's baseline (its last completed rollout) unless revoked: "
        "what devices outside a rollout get"
    )


class RevokeRequest(_In):
    reason: Reason | None = None


# -- rollouts -----------------------------------------------------------------------------------

GateMetric = Literal["latency_p95_ratio", "confidence_delta", "validation_failures"]
RolloutState = Literal["running", "waiting", "paused", "completed", "aborted"]
Fraction = Annotated[float, Field(ge=0, le=1)]


class StageIn(_In):
    percent: Annotated[float, Field(gt=0, le=100, description="share of the selected devices, cumulative")]
    soak_seconds: Annotated[int, Field(ge=0, le=30 * 86400)] = 0


class GateIn(_In):
    metric: GateMetric
    max: float | None = Field(None, description="upper bound: latency_p95_ratio, validation_failures")
    min: float | None = Field(None, description="lower bound: confidence_delta")
    min_samples: Annotated[int, Field(ge=0, le=2**53)] = Field(0, description="inference requests needed to judge")

    @field_validator("max", "min")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("bounds must be finite numbers")
        return v

    @model_validator(mode="after")
    def _right_bound(self) -> GateIn:
        bound = GATE_BOUNDS[self.metric]
        other = "min" if bound == "max" else "max"
        if getattr(self, bound) is None or getattr(self, other) is not None:
            raise ValueError(f"gate {self.metric!r} takes exactly one bound: {bound!r}")
        return self


def _default_stages() -> list[StageIn]:
    return [
        StageIn(percent=5, soak_seconds=600),
        StageIn(percent=25, soak_seconds=1800),
        StageIn(percent=100, soak_seconds=0),
    ]


class RolloutCreate(_In):
    model: ModelName
    version: Version
    selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=32, description="labels a device must all have ({}: every device)"
    )
    stages: list[StageIn] = Field(default_factory=_default_stages, min_length=1, max_length=20)
    min_devices: Annotated[int, Field(ge=0, le=MAX_INT)] = 10
    success_threshold: Fraction = 0.95
    failure_threshold: Fraction = 0.05
    install_timeout_seconds: Annotated[int, Field(ge=1, le=30 * 86400)] = 3600
    auto_advance: bool = True
    gates: list[GateIn] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _stages_and_gates(self) -> RolloutCreate:
        problem = spec_problem([s.percent for s in self.stages], [g.metric for g in self.gates])
        if problem is not None:
            raise ValueError(problem)
        return self


class RolloutAction(_In):
    reason: Reason | None = None


class StageCounts(BaseModel):
    offered: int
    installed: int
    failed: int = Field(description="failed or rolled_back events, or no install within install_timeout_seconds")
    device_faults: int = Field(
        description="reported they cannot install now (reason no_space or read_only): not failed, not decided"
    )
    pending: int
    not_reached: int = Field(description="in the cohort, never offered (has not polled since)")


class StageOut(BaseModel):
    percent: int | float
    soak_seconds: int
    state: Literal["passed", "running", "paused", "aborted", "not_started"]
    started_at: datetime | None
    cohort: int
    counts: StageCounts


class GateOut(BaseModel):
    metric: str
    value: float | None
    threshold: float
    samples: int
    status: Literal["pass", "fail", "pending"]
    detail: str


class HistoryOut(BaseModel):
    at: datetime
    event: str
    stage: int
    detail: str | None
    by: str


class RolloutOut(BaseModel):
    id: int
    model: str
    version: int
    baseline_version: int | None = Field(description="the model's baseline when the rollout was created")
    state: RolloutState
    reason: str | None
    stage: int = Field(description="0-based index of the current stage (of the last one once completed)")
    selector: dict[str, str]
    min_devices: int
    success_threshold: float
    failure_threshold: float
    install_timeout_seconds: int
    auto_advance: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    stages: list[StageOut]
    gates: list[GateOut]
    history: list[HistoryOut]


# -- devices ------------------------------------------------------------------------------------


class DeviceOut(BaseModel):
    device_id: str
    model: str
    labels: dict[str, str]
    installed_version: int | None
    status: str
    status_reason: str | None
    status_at: datetime | None
    enrolled_at: datetime
    last_seen_at: datetime | None


class EventOut(BaseModel):
    type: str
    version: int | None
    reason: str | None
    metrics: dict[str, Any] | None
    device_time: datetime | None
    received_at: datetime


class MetricSummaryOut(BaseModel):
    """The metrics events of one version that event retention deleted, summed (request-weighted means)."""

    version: int
    windows: int = Field(description="metrics events folded in")
    requests: int
    p50_ms: float | None
    p95_ms: float | None
    mean_confidence: float | None
    first_at: datetime
    last_at: datetime


class DeviceDetail(DeviceOut):
    last_metrics: dict[str, Any] | None
    recent_events: list[EventOut]
    previous_version: int | None = Field(
        None, description="what it ran before its installed version (its other slot, as far as the server knows)"
    )
    metric_history: list[MetricSummaryOut] = Field(
        default_factory=list, description="summaries of metrics events older than OTA_EVENT_RETENTION_DAYS"
    )


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class VersionCount(BaseModel):
    version: int | None
    devices: int


class FleetModel(BaseModel):
    model: str
    offered_version: int | None = Field(description="the model's baseline, unless revoked")
    devices: int
    versions: list[VersionCount]
    statuses: dict[str, int]


class Fleet(BaseModel):
    models: list[FleetModel]


# -- polling (documentation of the hand-rendered body) ------------------------------------------


class Download(BaseModel):
    url: str
    length: int
    sha256: str


class DeltaDownload(Download):
    from_version: int


class UpdateOffer(BaseModel):
    model: str
    version: int
    manifest: dict[str, Any] = Field(description="the signed manifest; re-encodes canonically to the signed bytes")
    manifest_b64: str = Field(description="base64 of the exact signed manifest bytes")
    signatures: list[dict[str, str]]
    download: Download
    delta: DeltaDownload | None
    poll_interval: int


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class KeyRevokedVersion(BaseModel):
    model: str
    version: int
    keyid: str = Field(description="the revoked publisher key that signed it")
    reason: str = Field(description="as stored in the version's revoked_reason")


class TrustDocumentOut(BaseModel):
    """A root or keys document the server accepted (or already held)."""

    kind: Literal["root", "keys"]
    version: int
    expires: str
    threshold: int
    keys: list[str] = Field(description="key ids (hex sha256 of the raw Ed25519 public key)")
    revoked: list[str] = Field(default_factory=list, description="keys document: revoked key ids")
    created: bool = Field(description="false: this very document was stored already")
    warning: str | None = None
    revoked_versions: list[KeyRevokedVersion] = Field(
        default_factory=list,
        description="keys document: versions this upload revoked, as signed by a key it revokes (never offered again)",
    )


class TrustChainOut(BaseModel):
    """The chain devices walk: every root, oldest first, and the keys document signed by the newest."""

    tag: str = Field(description="r<root version>-k<keys version>; the poll's Ota-Trust-Version header")
    roots: list[dict[str, Any]]
    keys: dict[str, Any] | None
