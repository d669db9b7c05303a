"""Every way the server refuses a request or finds a dependency down, as one tree.

Each class carries the HTTP status, a stable problem `slug` (the RFC 9457 `type` is
``urn:ota:problem:<slug>``) and a title; the message is the problem's human-readable `detail`.
Foreign exceptions (SQLAlchemy, boto3, OS errors, :mod:`artifact` refusals) are translated into
these at one boundary each — the database session (:mod:`server.db.session`), the storage
backends, the publish service — so that routes never see a driver's exception and no input can
turn into a 500.

The split that matters to a client is by cause: a :class:`ClientError` means *this request* is
wrong and retrying it unchanged cannot help; an :class:`UnavailableError` means a dependency is
down and the same request may succeed later (the response carries ``Retry-After``).

::

    OtaServerError
    ├── ClientError                         4xx: the request is at fault; do not retry unchanged
    │   ├── BadRequestError             400 malformed parameter (cursor, label filter, Range)
    │   ├── AuthenticationError         401 no credentials, or credentials nobody issued
    │   ├── ForbiddenError              403 valid credentials that may not do this
    │   │   └── EnrollmentRefusedError      wrong enrollment secret
    │   ├── NotFoundError               404
    │   │   ├── ModelNotFoundError
    │   │   ├── VersionNotFoundError
    │   │   ├── DeviceNotFoundError
    │   │   ├── RolloutNotFoundError
    │   │   └── BlobNotFoundError           (also raised by storage backends)
    │   ├── ConflictError               409
    │   │   ├── VersionConflictError        same version already published with other bytes
    │   │   ├── VersionNotAboveLatestError  version is not above the latest (rollback/replay)
    │   │   ├── DeviceExistsError           device id already enrolled
    │   │   ├── RolloutActiveError          the model already has an active rollout
    │   │   ├── VersionRevokedError         a revoked version cannot be rolled out
    │   │   ├── VersionNotAboveBaselineError   a rollout must move the model forward
    │   │   ├── RolloutTransitionError      pause/resume/abort/advance not possible in this state
    │   │   └── TrustConflictError          a trust document that rolls back, forks or skips a version
    │   ├── BlobCollectedError          410 the blob of a revoked or superseded version was collected by the GC
    │   ├── PayloadTooLargeError        413 body over the configured limit (refused before read whole)
    │   ├── RangeNotSatisfiableError    416 Range starts past the end of the blob
    │   ├── RateLimitedError            429 + Retry-After: too many requests of this kind (enrollment)
    │   ├── InvalidArtifactError        422 the artifact fails the door or the ONNX checks
    │   └── InvalidTrustDocumentError   422 a root or keys document that is malformed, expired or badly signed
    └── UnavailableError                    503 + Retry-After: retry later
        ├── DatabaseUnavailableError
        └── StorageUnavailableError

    ConstraintViolationError                not HTTP: a write broke a unique constraint; core decides what it means
    ConfigurationError                      not HTTP: the server cannot start with these settings
    MaintenanceBusyError                    not HTTP: another process holds the `ota-server gc` lease
"""

from __future__ import annotations

from typing import ClassVar


class OtaServerError(Exception):
    """Base of every error the server answers with a problem document."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    @property
    def type_uri(self) -> str:
        return f"urn:ota:problem:{self.slug}"


class ClientError(OtaServerError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class BadRequestError(ClientError):
    pass


class AuthenticationError(ClientError):
    """No bearer token, or one the server never issued (or has revoked)."""

    status = 401
    slug = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="ota"'})


class ForbiddenError(ClientError):
    """Valid credentials for someone who may not do this (a device on an admin endpoint …)."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"


class EnrollmentRefusedError(ForbiddenError):
    slug = "enrollment-refused"
    title = "Enrollment refused"


class NotFoundError(ClientError):
    status = 404
    slug = "not-found"
    title = "Not found"


class ModelNotFoundError(NotFoundError):
    slug = "model-not-found"
    title = "Model not found"


class VersionNotFoundError(NotFoundError):
    slug = "version-not-found"
    title = "Model version not found"


class DeviceNotFoundError(NotFoundError):
    slug = "device-not-found"
    title = "Device not found"


class RolloutNotFoundError(NotFoundError):
    slug = "rollout-not-found"
    title = "Rollout not found"


class BlobNotFoundError(NotFoundError):
    slug = "blob-not-found"
    title = "Blob not found"


class ConflictError(ClientError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class VersionConflictError(ConflictError):
    slug = "version-conflict"
    title = "Version already published with other bytes"


class VersionNotAboveLatestError(ConflictError):
    slug = "version-not-above-latest"
    title = "Version is not above the latest"


class DeviceExistsError(ConflictError):
    slug = "device-exists"
    title = "Device already enrolled"


class RolloutActiveError(ConflictError):
    slug = "rollout-active"
    title = "The model already has an active rollout"


class VersionRevokedError(ConflictError):
    slug = "version-revoked"
    title = "Version is revoked"


class VersionNotAboveBaselineError(ConflictError):
    slug = "version-not-above-baseline"
    title = "Version is not above the model's baseline"


class RolloutTransitionError(ConflictError):
    slug = "rollout-transition-refused"
    title = "The rollout cannot do that in its current state"


class BlobCollectedError(ClientError):
    """The blob existed, but the storage GC deleted it: its version was revoked or superseded and unused."""

    status = 410
    slug = "blob-collected"
    title = "Blob collected"


class PayloadTooLargeError(ClientError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class RangeNotSatisfiableError(ClientError):
    status = 416
    slug = "range-not-satisfiable"
    title = "Range not satisfiable"

    def __init__(self, detail: str, *, size: int) -> None:
        super().__init__(detail, headers={"Content-Range": f"bytes */{size}"})


class RateLimitedError(ClientError):
    """Too many requests of one kind (enrollment) from this address or from everyone; retry later."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class InvalidArtifactError(ClientError):
    """The artifact failed verification; `reason` names the :mod:`artifact` error class (or `onnx`)."""

    status = 422
    slug = "invalid-artifact"
    title = "Invalid artifact"

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


class TrustConflictError(ConflictError):
    """A trust document whose version is not the next one (rollback, fork, skipped root version)."""

    slug = "trust-conflict"
    title = "Trust document conflicts with the stored chain"

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


class InvalidTrustDocumentError(ClientError):
    """A root or keys document refused by :mod:`artifact.trust`; `reason` names its error class."""

    status = 422
    slug = "invalid-trust-document"
    title = "Invalid trust document"

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UnavailableError(OtaServerError):
    """A dependency is down; the same request may succeed after `Retry-After` seconds."""

    status = 503
    slug = "unavailable"
    title = "Service unavailable"


class DatabaseUnavailableError(UnavailableError):
    slug = "database-unavailable"
    title = "Database unavailable"


class StorageUnavailableError(UnavailableError):
    slug = "storage-unavailable"
    title = "Object storage unavailable"


class ConstraintViolationError(Exception):
    """A write broke a database constraint — here always a unique one: a concurrent writer got there first.

    The database session (:mod:`server.db.session`) raises it in place of SQLAlchemy's
    ``IntegrityError``; the core service that wrote decides what it means (a device id already
    enrolled, a version another publish committed first). One that escapes is a bug: answered 500.
    """


class ConfigurationError(Exception):
    """The server cannot start with these settings (not an HTTP error: raised before serving)."""


class MaintenanceBusyError(Exception):
    """Another process holds the maintenance lease (one `ota-server gc` at a time)."""
