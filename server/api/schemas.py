"""Wire schemas (pydantic), separate from the database models. Limits here are the input contract."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

import artifact as A

MAX_INT = 2**31 - 1
MODEL_NAME = A.MODEL_NAME_PATTERN
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"
SHA256 = A.SHA256_HEX_PATTERN

ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(min_length=0, max_length=255)]
Version = Annotated[int, Field(ge=1, le=MAX_INT)]
EventType = Literal["checking", "downloading", "verified", "installed", "failed", "rolled_back", "metrics"]
DeviceStatus = Literal["enrolled", "checking", "downloading", "verified", "installed", "failed", "rolled_back"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- enrollment ---------------------------------------------------------------------------------


class EnrollRequest(_In):
    enrollment_secret: Annotated[str, StringConstraints(max_length=1024)]
    device_id: DeviceId | None = Field(None, description="chosen by the server when absent")
    model: ModelName
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=32)


class EnrollResponse(BaseModel):
    device_id: str
    model: str
    token: str = Field(description="shown once; the server keeps no copy it could show again")
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
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
    at: datetime | None = Field(None, description="device clock, RFC 3339; informative only")
    metrics: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.]{1,64}$")], float] | None = Field(
        None, max_length=32
    )
    # What an agent adds to say more about an install; kept with the event (see `fleet.apply_events`).
    detail: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        None, description="the human message behind `reason`"
    )
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
    offered_version: int | None = Field(description="highest version that is not revoked: what devices get")


class RevokeRequest(_In):
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


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


class DeviceDetail(DeviceOut):
    last_metrics: dict[str, Any] | None
    recent_events: list[EventOut]


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class VersionCount(BaseModel):
    version: int | None
    devices: int


class FleetModel(BaseModel):
    model: str
    offered_version: int | None
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
