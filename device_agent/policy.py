"""The one error policy: every exception the update loop meets is turned into one decision here.

Fatal means the offered *version* is bad for this device (the bytes were judged and refused, or
the model misbehaves): report `failed` with a reason, keep the old model, never retry that
version. Transient means nothing was learned about the version (the network, a busy server, a
full disk): back off with jitter and try again. The states of :mod:`device_agent.machine` raise;
only this module decides.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import Enum

import artifact as A

from .errors import (
    AuthError,
    CrashLoopError,
    OfferError,
    SlotError,
    TransientError,
    ValidationFailedError,
)


class Verdict(Enum):
    TRANSIENT = "transient"  # retry later, with backoff
    FATAL = "fatal"  # the version is refused: report failed, keep the old model


@dataclass(frozen=True)
class Disposition:
    verdict: Verdict
    reason: str  # a short snake_case code for the `failed` event, e.g. "hash_mismatch"
    detail: str  # the human-readable message
    retry_after: float | None = None
    slow: bool = False  # back off at the slowest pace (token refused: hammering will not help)

    @property
    def fatal(self) -> bool:
        return self.verdict is Verdict.FATAL


# Codes that read better than the class name would give.
_REASONS: dict[type[BaseException], str] = {
    A.ManifestError: "manifest_invalid",
    A.ArtifactFormatError: "artifact_invalid",
    OfferError: "offer_invalid",
    ValidationFailedError: "validation_failed",
    CrashLoopError: "crash_loop",
    SlotError: "slot_unreadable",
}


def reason_code(exc: BaseException) -> str:
    """`HashMismatchError` → `hash_mismatch`; the closest registered ancestor wins."""
    for cls in type(exc).__mro__:
        if cls in _REASONS:
            return _REASONS[cls]
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def classify(exc: Exception, *, in_update: bool) -> Disposition:
    """Decide what an exception means. `in_update`: a version is being installed when it happened.

    A bug (any exception not named here) during an update fails that version with
    `internal_error` rather than retrying it forever; outside an update it is retried, so the
    agent keeps serving whatever happens.
    """
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, A.ArtifactError | OfferError | ValidationFailedError | CrashLoopError | SlotError):
        return Disposition(Verdict.FATAL, reason_code(exc), detail)
    if isinstance(exc, TransientError):
        return Disposition(Verdict.TRANSIENT, reason_code(exc), detail, retry_after=exc.retry_after)
    if isinstance(exc, AuthError):
        return Disposition(Verdict.TRANSIENT, "auth", detail, slow=True)
    if isinstance(exc, OSError):  # disk full, permissions: the version is not to blame
        return Disposition(Verdict.TRANSIENT, "storage", f"{type(exc).__name__}: {detail}")
    verdict = Verdict.FATAL if in_update else Verdict.TRANSIENT
    return Disposition(verdict, "internal_error", f"{type(exc).__name__}: {detail}")


class Backoff:
    """Jittered exponential backoff ("full jitter"): delay n is uniform in [base·2ⁿ/2, base·2ⁿ], capped.

    Half the window is kept as a floor so that a fleet that lost its server together does not
    come back together, yet no device retries instantly. A server's Retry-After is a lower bound.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None, *, slow: bool = False) -> float:
        self.failures += 1
        window = self.cap if slow else min(self.cap, self.base * 2 ** (self.failures - 1))
        delay = self._rng.uniform(window / 2, window)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def reset(self) -> None:
        self.failures = 0


def jittered(interval: float, rng: random.Random | None = None, spread: float = 0.1) -> float:
    """A poll interval ± `spread`, so that devices started together drift apart."""
    r = rng or random
    return interval * (1.0 + r.uniform(-spread, spread))
