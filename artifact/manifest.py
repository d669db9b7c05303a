"""The signed manifest: schema 1, exactly as DESIGN.md lists it, and its canonical bytes.

The signature covers the *canonical bytes* of the manifest, so a manifest read from the wire is
accepted only if its bytes already are canonical (re-encoding them gives the same bytes). That
closes the door on look-alike encodings (duplicate keys, other whitespace, escaped characters) that
would let two different texts share one signature.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ManifestError

SCHEMA_VERSION = 1
MAX_VERSION = 2**31 - 1  # versions are 32-bit signed integers everywhere (the registry, the agent's state)
MAX_METRIC_INT = 2**53  # integers JSON carries exactly between any two parsers (RFC 8259 §6)
MAX_MANIFEST_BYTES = 64 * 1024
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # the model names every part accepts
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"  # a sha256 digest as manifests, URLs and blob names write it

Sha256Hex = Annotated[str, StringConstraints(pattern=SHA256_HEX_PATTERN)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def canonical_json(value: Any) -> bytes:
    """The one canonical encoding (DESIGN.md): sorted keys, no whitespace, UTF-8, no NaN."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as e:  # NaN or Infinity: not JSON, and not stable under a round trip
        raise ManifestError(f"manifest holds a non-finite number: {e}") from e
    return text.encode("utf-8")


def format_time(moment: datetime, *, milliseconds: bool = False) -> str:
    """RFC 3339 in UTC with a `Z` suffix: second precision, the only form manifests carry, or with
    `milliseconds` (the agent's events, so that one agent's events sort by time)."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    utc = moment.astimezone(UTC)
    if milliseconds:
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{utc.microsecond // 1000:03d}Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp (`...Z`) as written by :func:`format_time`."""
    if not _RFC3339_UTC.match(text):
        raise ValueError(f"{text!r} is not an RFC 3339 UTC timestamp like 2026-01-31T12:00:00Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PayloadInfo(_Strict):
    """The bytes sent over the wire."""

    encoding: Literal["onnx+zstd"]
    length: int = Field(ge=1)
    sha256: Sha256Hex


class InputSpec(_Strict):
    name: str = Field(min_length=1)
    shape: list[int | str]
    dtype: str = Field(min_length=1)


class OutputSpec(_Strict):
    name: str = Field(min_length=1)
    shape: list[int | str]


class OnnxInfo(_Strict):
    """The decoded model the payload turns into."""

    length: int = Field(ge=1)
    sha256: Sha256Hex
    opset: int = Field(ge=1)
    input: InputSpec
    output: OutputSpec


class Preprocess(_Strict):
    """How a device turns an image into the model's input tensor (resize, scale to [0,1], normalise)."""

    size: int = Field(ge=8, le=4096)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    layout: Literal["NCHW", "NHWC"]

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be positive")
        return v


class GoldenCase(_Strict):
    """One input the device runs before it swaps, with the answer the publisher saw.

    Either `image` (base64 PNG/JPEG, preprocessed by the device with the manifest's `preprocess`)
    or `seed` (the input tensor is regenerated bit-exactly by :func:`artifact.golden.seeded_input`).
    """

    image: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    top1: int = Field(ge=0)
    logits: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> GoldenCase:
        if (self.image is None) == (self.seed is None):
            raise ValueError("a golden case needs exactly one of 'image' or 'seed'")
        return self


class Golden(_Strict):
    tolerance: float = Field(gt=0, le=10)
    cases: list[GoldenCase] = Field(min_length=8, max_length=16)


class Manifest(_Strict):
    """Schema 1 of the signed manifest (DESIGN.md, "The artifact")."""

    schema_: Literal[1] = Field(alias="schema")
    model: ModelName
    version: int = Field(ge=1, le=MAX_VERSION)
    created_at: str
    parent_version: int | None = Field(ge=1, le=MAX_VERSION)
    payload: PayloadInfo
    onnx: OnnxInfo
    labels: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        min_length=2, max_length=10000
    )
    preprocess: Preprocess
    metrics: dict[str, float | int]
    golden: Golden
    expires_at: str | None

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    @field_validator("created_at", "expires_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            parse_time(v)
        return v

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, v: dict[str, float | int]) -> dict[str, float | int]:
        for key, number in v.items():
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"metric {key!r} is not a finite number")
            if isinstance(number, int) and abs(number) > MAX_METRIC_INT:
                raise ValueError(f"metric {key!r} is an integer beyond ±2^53")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.labels)
        if self.parent_version is not None and self.parent_version >= self.version:
            raise ValueError(f"parent_version {self.parent_version} must be below version {self.version}")
        for i, case in enumerate(self.golden.cases):
            if case.top1 >= n:
                raise ValueError(f"golden.cases[{i}].top1 = {case.top1} but there are only {n} labels")
            if len(case.logits) != n:
                raise ValueError(f"golden.cases[{i}].logits has {len(case.logits)} values for {n} labels")
        return self

    @property
    def created(self) -> datetime:
        return parse_time(self.created_at)

    @property
    def expires(self) -> datetime | None:
        return None if self.expires_at is None else parse_time(self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object whose canonical encoding is signed."""
        return self.model_dump(mode="json", by_alias=True)

    def canonical_bytes(self) -> bytes:
        data = canonical_json(self.to_dict())
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
        return data


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    more = f" (and {e.error_count() - 5} more)" if e.error_count() > 5 else ""
    return "; ".join(parts) + more


def build_manifest(**fields: Any) -> Manifest:
    """Validate manifest fields given as Python values; raise :class:`ManifestError` naming the field."""
    try:
        return Manifest.model_validate(fields, strict=False)
    except ValidationError as e:
        raise ManifestError(f"invalid manifest: {_describe(e)}") from e


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes as received; they must be canonical.

    Raises :class:`ManifestError` with a message that names the offending field.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"manifest is not UTF-8 JSON: {e}") from e
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, nesting past the stack
        raise ManifestError(f"manifest holds a number or nesting this reader refuses: {e}") from e
    if not isinstance(value, dict):
        raise ManifestError("manifest must be a JSON object")
    schema = value.get("schema")
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"schema: unsupported manifest schema {schema!r} (this version reads schema 1)")
    if canonical_json(value) != data:
        raise ManifestError("manifest bytes are not canonical (sorted keys, no whitespace, UTF-8, no duplicates)")
    try:
        return Manifest.model_validate_json(data, strict=True)
    except ValidationError as e:
        raise ManifestError(f"invalid manifest: {_describe(e)}") from e
