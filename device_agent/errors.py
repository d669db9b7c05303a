"""Every way the agent's own work can fail, split by what the agent should do about it.

Refusals of the artifact itself (bad signature, hash mismatch, expiry, downgrade …) are
:class:`artifact.ArtifactError` and are never re-declared here. This module adds the failures
that belong to the device: the network, the server's answers, the model's behaviour on this
device, and the agent's own bookkeeping. :mod:`device_agent.policy` maps each to one decision.

::

    AgentError
    ├── TransientError              worth retrying later with backoff: the bytes were never judged
    │   ├── NetworkError            connection refused, reset, timed out (httpx.TransportError)
    │   ├── ServerBusyError         5xx or 429 (carries Retry-After when the server sent one)
    │   ├── ProtocolError           an answer this agent cannot read (garbled JSON, odd status)
    │   ├── NoSpaceError            the disk is full (ENOSPC); also an OSError: nothing learned about the version
    │   └── TrustPendingError       a root-only device has no keys document yet: nothing can be judged
    ├── AuthError                   the server refused the device token (401/403): keep serving, retry slowly
    ├── RejectedError               the server refused a request as invalid (4xx): resending it unchanged is futile
    ├── EnrollmentError             enrollment refused (bad secret, bad request): the agent cannot start
    ├── DirectoryLockedError        another agent already uses this model directory: the agent cannot start
    ├── SlotError                   a model slot on disk is missing, incomplete or unreadable
    ├── OfferError                  an offer that contradicts its own signed manifest: fatal for that version
    ├── ValidationFailedError       the model loads or answers wrong on this device: fatal for that version
    ├── CrashLoopError              the agent died too often in one state for one version: fatal for it
    └── InferenceError              a /predict request the agent cannot serve
        ├── NoModelError            no model installed yet (HTTP 503)
        ├── PayloadTooLargeError    request body above the limit (HTTP 413)
        └── BadImageError           the body is not a PNG/JPEG image the agent can decode (HTTP 400/415)
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every failure the agent raises itself. Messages are meant for operators."""


class TransientError(AgentError):
    """Nothing was learned about the update: try again later, with backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status behind it, when there was one


class NetworkError(TransientError):
    """The server could not be reached, or the connection broke mid-answer."""


class ServerBusyError(TransientError):
    """The server answered 5xx or 429: it is up but cannot serve us now."""


class ProtocolError(TransientError):
    """The server's answer does not follow the wire API; a later answer may."""


class NoSpaceError(TransientError, OSError):
    """A write found the disk full. Raised by :class:`device_agent.fsutil.Disk`, the one place that
    translates ENOSPC; it stays an OSError so that code guarding writes catches it as one."""


class TrustPendingError(TransientError):
    """A device that trusts a root only has not accepted a keys document yet (device_agent.trust)."""


class AuthError(AgentError):
    """The server refused this device's token. The agent keeps serving and retries at its slowest pace."""


class RejectedError(AgentError):
    """The server answered 4xx to a request body it will never accept (a malformed event batch)."""


class EnrollmentError(AgentError):
    """Enrollment was refused; without a token the agent cannot ask for updates."""


class SlotError(AgentError):
    """A slot's files are missing or unreadable (their *content* is judged by the door)."""


class DirectoryLockedError(AgentError):
    """Another agent process holds the model directory's lock."""


class OfferError(AgentError):
    """The offer's unsigned fields contradict the signed manifest it carries."""


class ValidationFailedError(AgentError):
    """The verified model failed on this device: it does not load, or its golden answers differ."""


class CrashLoopError(AgentError):
    """The agent was killed or crashed too many times in one state while installing one version."""


class InferenceError(AgentError):
    """A prediction request that cannot be served; `status` is the HTTP status it maps to."""

    status = 500


class NoModelError(InferenceError):
    """No model is installed yet."""

    status = 503


class PayloadTooLargeError(InferenceError):
    """The request body is larger than the agent accepts."""

    status = 413


class BadImageError(InferenceError):
    """The body is not an image the agent can decode (400), or not PNG/JPEG at all (415)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
