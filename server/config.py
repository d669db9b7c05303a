"""The one settings object: every `OTA_*` variable of DESIGN.md, each with a working default.

Defaults make `ota-server serve` work out of the box in development (SQLite and a local blob
directory under ./ota-data, well-known development secrets). With ``OTA_ENV=production`` the
server refuses to start on an empty, short or well-known secret (the metrics token included), without
publisher keys, and without ``OTA_PUBLIC_URL`` or ``OTA_TRUSTED_HOSTS`` (signed download URLs must not be
built from whatever ``Host`` a client sends), so that a forgotten variable cannot become an open registry.

Secrets rotate with an overlap: ``OTA_PREVIOUS_SECRET_KEYS`` and ``OTA_PREVIOUS_ENROLLMENT_SECRETS``
list earlier values, each with the moment it retires (``SECRET@2027-01-31T00:00:00Z``); production
holds them to the same rules as current secrets (see docs/security.md, "Rotating secrets").

Settings are read once (by the CLI, or by the test that builds them) and passed into
:func:`server.app.create_app`; nothing below reads the environment again.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError

MAX_GC_SECONDS = 100 * 365 * 86_400  # grace periods and orphan ages: a century (beyond, dates overflow)
MAX_RETENTION_DAYS = 36_500
DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_ENROLLMENT_SECRET = "dev-enrollment-secret"
DEV_SECRET_KEY = "dev-secret-key"
_PLACEHOLDERS = {
    DEV_ADMIN_TOKEN,
    DEV_ENROLLMENT_SECRET,
    DEV_SECRET_KEY,
    "changeme",
    "change-me",
    "secret",
    "password",
    "admin",
    "token",
    "example",
    "placeholder",
    "xxx",
    "todo",
}
MIN_SECRET_LENGTH = 24
MiB = 1024 * 1024
DAY = 86400


class RetiringSecret(BaseModel):
    """A secret that still works until `until`, then is refused as retired (a rotation's overlap).

    In the environment: ``secret@2027-01-31T00:00:00Z``, comma-separated (the last ``@`` splits, so
    a secret may contain ``@`` but no comma). Its date must name a time zone.
    """

    model_config = ConfigDict(frozen=True)

    secret: SecretStr
    until: datetime

    @field_validator("until")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("the retirement date needs a time zone (e.g. 2027-01-31T00:00:00Z)")
        return value


def _retiring(value: object, name: str) -> object:
    """``secret@date,secret@date`` → a list of :class:`RetiringSecret` fields (errors never echo a secret)."""
    if not isinstance(value, str):
        return value
    entries = []
    for n, entry in enumerate((e.strip() for e in value.split(",") if e.strip()), 1):
        secret, at, when = entry.rpartition("@")
        if not at or not secret:
            raise ValueError(f"{name} entry {n} must look like SECRET@2027-01-31T00:00:00Z")
        try:
            until = datetime.fromisoformat(when.strip())
        except ValueError:
            raise ValueError(f"{name} entry {n}: the date after '@' is not an RFC 3339 time") from None
        entries.append({"secret": secret, "until": until})
    return entries


class Settings(BaseSettings):
    """Server configuration; environment variables carry the `OTA_` prefix (e.g. `OTA_DATABASE_URL`)."""

    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./ota-data/ota.db"
    db_pool_size: int = Field(10, ge=1, le=200)
    db_connect_timeout: int = Field(5, ge=2, le=300, description="seconds to open a database connection (PostgreSQL)")
    db_pool_timeout: float = Field(5.0, gt=0, le=300, description="seconds a request waits for a pooled connection")
    db_statement_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="seconds one statement may run; also the TCP timeout on unanswered sends; a PostgreSQL"
        " that gives no answer within this + 2 s loses the connection (503)",
    )

    storage_url: str = "file://./ota-data/blobs"
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="endpoint devices reach for presigned URLs, when it differs from the server's own"
    )
    s3_region: str = "us-east-1"
    s3_multipart_threshold: int = Field(16 * MiB, ge=5 * MiB)
    s3_multipart_chunk: int = Field(16 * MiB, ge=5 * MiB)

    admin_token: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    enrollment_secret: SecretStr = SecretStr(DEV_ENROLLMENT_SECRET)
    secret_key: SecretStr = Field(
        SecretStr(DEV_SECRET_KEY), description="signs device tokens, blob download URLs and dashboard sessions"
    )
    previous_secret_keys: Annotated[list[RetiringSecret], NoDecode] = Field(
        default_factory=list,
        description="earlier OTA_SECRET_KEY values, `key@RFC3339,…`: what they signed verifies until that moment",
    )
    previous_enrollment_secrets: Annotated[list[RetiringSecret], NoDecode] = Field(
        default_factory=list,
        description="earlier OTA_ENROLLMENT_SECRET values, `secret@RFC3339,…`: accepted until that moment",
    )
    device_token_seconds: int = Field(
        30 * DAY, ge=60, le=365 * DAY, description="lifetime of a device token; agents renew theirs halfway"
    )
    publisher_keys: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    publisher_threshold: int = Field(1, ge=1)

    poll_interval: int = Field(300, ge=1, le=86400)
    poll_jitter: float = Field(0.1, ge=0, lt=1, description="± fraction spread per device so fleets don't poll in step")
    public_url: str | None = Field(
        None, description="base URL devices use to reach this server (development default: the request's Host)"
    )
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host header values accepted (comma-separated; '*.example.com' allowed)"
    )
    metrics_token: SecretStr | None = Field(None, description="bearer token /metrics requires (production: required)")
    download_url_seconds: int = Field(3600, ge=60, le=7 * 86400)

    max_artifact_bytes: int = Field(256 * MiB, ge=1024)
    max_model_bytes: int = Field(
        64 * MiB, ge=1024, description="largest decoded ONNX model an upload may sign (bounds decompression)"
    )
    max_request_bytes: int = Field(1 * MiB, ge=1024)
    spool_dir: Path | None = Field(
        None,
        description="where upload bodies are spooled; default: `spool` beside a file:// blob directory, "
        "else `ota-spool` in the system's temp directory. Leftovers of killed processes are removed at start.",
    )

    delta_max_ratio: float = Field(0.6, gt=0, le=1)
    delta_workers: int = Field(1, ge=1, le=16)
    delta_claim_timeout: float = Field(600.0, gt=0)

    cache_seconds: float = Field(1.0, gt=0, le=60, description="how stale a process's registry view may get")
    seen_flush_seconds: float = Field(5.0, gt=0, le=300, description="also how often rollout offers are written")
    rollout_eval_seconds: float = Field(5.0, gt=0, le=3600, description="how often each process judges active rollouts")
    retry_after: int = Field(5, ge=1)
    gc_grace_seconds: int = Field(
        86400,
        ge=0,
        le=MAX_GC_SECONDS,
        description="how long a version stays collectable before `ota-server gc` deletes its blobs",
    )
    event_retention_days: int = Field(
        30, ge=1, le=MAX_RETENTION_DAYS, description="device events older than this are deleted"
    )
    gc_interval_seconds: int = Field(
        0,
        ge=0,
        le=MAX_GC_SECONDS,
        description="seconds between `ota-server gc` runs inside `serve`, one process at a time (0: off)",
    )

    # Enrollment rate limits: token buckets in each server process (server/core/ratelimit.py); 0 turns one off.
    enroll_rate: float = Field(1.0, ge=0, description="enrollments per second one client address may sustain")
    enroll_burst: int = Field(100, ge=1, description="enrollments one client address may make at once")
    enroll_global_rate: float = Field(20.0, ge=0, description="enrollments per second of all clients together")
    enroll_global_burst: int = Field(500, ge=1, description="enrollments all clients together may make at once")
    enroll_tracked_addresses: int = Field(10_000, ge=100, le=10_000_000, description="client addresses remembered")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("publisher_keys", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value

    @field_validator("previous_secret_keys", mode="before")
    @classmethod
    def _split_previous_keys(cls, value: object) -> object:
        return _retiring(value, "OTA_PREVIOUS_SECRET_KEYS")

    @field_validator("previous_enrollment_secrets", mode="before")
    @classmethod
    def _split_previous_enrollment(cls, value: object) -> object:
        return _retiring(value, "OTA_PREVIOUS_ENROLLMENT_SECRETS")

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("public_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("OTA_PUBLIC_URL must be an absolute http:// or https:// URL")
        return value

    @field_validator("storage_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("file://", "s3://")):
            raise ValueError("OTA_STORAGE_URL must start with file:// or s3://")
        return value

    @property
    def upload_spool(self) -> Path:
        """The directory upload bodies are spooled to (only this server's files live there)."""
        if self.spool_dir is not None:
            return self.spool_dir
        if self.storage_url.startswith("file://"):
            from urllib.parse import unquote

            return Path(unquote(self.storage_url.removeprefix("file://"))).parent / "spool"
        import tempfile

        return Path(tempfile.gettempdir()) / "ota-spool"

    @model_validator(mode="after")
    def _rotations_differ(self) -> Settings:
        """A previous value equal to the current one (or listed twice) would make "retired" ambiguous."""
        for name, current, previous in (
            ("OTA_PREVIOUS_SECRET_KEYS", self.secret_key, self.previous_secret_keys),
            ("OTA_PREVIOUS_ENROLLMENT_SECRETS", self.enrollment_secret, self.previous_enrollment_secrets),
        ):
            values = [current.get_secret_value(), *(p.secret.get_secret_value() for p in previous)]
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeats a secret, or lists the current one")
        return self

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        secrets = {
            "OTA_ADMIN_TOKEN": self.admin_token,
            "OTA_ENROLLMENT_SECRET": self.enrollment_secret,
            "OTA_SECRET_KEY": self.secret_key,
        }
        metrics = self.metrics_token
        if metrics is None or not metrics.get_secret_value():
            problems.append("OTA_METRICS_TOKEN is empty: /metrics would be public")
        else:
            secrets["OTA_METRICS_TOKEN"] = metrics
        checked = dict(secrets)
        for name, previous in (
            ("OTA_PREVIOUS_SECRET_KEYS", self.previous_secret_keys),
            ("OTA_PREVIOUS_ENROLLMENT_SECRETS", self.previous_enrollment_secrets),
        ):
            checked.update({f"{name} entry {n}": p.secret for n, p in enumerate(previous, 1)})
        for name, secret in checked.items():
            value = secret.get_secret_value()
            if value.strip().lower() in _PLACEHOLDERS or value.strip().lower().startswith(("dev-", "change")):
                problems.append(f"{name} is a placeholder")
            elif len(value) < MIN_SECRET_LENGTH:
                problems.append(f"{name} is shorter than {MIN_SECRET_LENGTH} characters")
        if self.public_url is None and not self.trusted_hosts:
            problems.append(
                "set OTA_PUBLIC_URL (or OTA_TRUSTED_HOSTS): download URLs must not be built from the request's Host"
            )
        values = [s.get_secret_value() for s in secrets.values()]
        if len(set(values)) != len(values):
            problems.append("OTA_ADMIN_TOKEN, OTA_ENROLLMENT_SECRET, OTA_SECRET_KEY and OTA_METRICS_TOKEN must differ")
        if not self.publisher_keys:
            problems.append("OTA_PUBLISHER_KEYS is empty: the registry would accept no artifact")
        if problems:
            raise ValueError("refusing to run in production: " + "; ".join(problems))
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (plus explicit overrides), or :class:`ConfigurationError`."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()]
        raise ConfigurationError("invalid configuration: " + "; ".join(lines)) from e
