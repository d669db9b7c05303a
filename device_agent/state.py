"""The update state machine's persisted record, DIR/state.json.

It is written atomically before every risky step (STYLE.md 5, 6), so that after a kill -9 the
agent knows which state it died in, for which version, and how many times: `crashes` counts, per
state, the starts that found the current job unfinished in that state, and a crash loop ends when
one passes the cap. A clean shutdown (SIGTERM, Ctrl-C) is recorded and does not count.

Failed versions are remembered so that a server that keeps offering one does not make the device
download it again and again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import ProtocolError
from .fsutil import Disk, read_json
from .protocol import Offer

log = logging.getLogger(__name__)
MAX_FAILED_REMEMBERED = 100


class State(StrEnum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    VALIDATING = "validating"
    SWAPPING = "swapping"
    REPORTING = "reporting"


@dataclass
class Job:
    """The update in progress: the offer, and how far it got."""

    offer: Offer
    source: str = "full"  # "delta" or "full"
    delta_refused: str | None = None  # why the delta was dropped for the full payload
    slot: str | None = None  # the slot being filled
    from_version: int | None = None  # what was served when the job began
    announced: str | None = None  # the source a `downloading` event was sent for
    timings: dict[str, float] = field(default_factory=dict)  # ms per phase, for the installed event
    bytes_received: int = 0

    @property
    def version(self) -> int:
        return self.offer.version

    def to_json(self) -> dict[str, Any]:
        return {
            "offer": self.offer.to_json(),
            "source": self.source,
            "delta_refused": self.delta_refused,
            "slot": self.slot,
            "from_version": self.from_version,
            "announced": self.announced,
            "timings": self.timings,
            "bytes_received": self.bytes_received,
        }

    @classmethod
    def from_json(cls, value: Any) -> Job:
        """The job as saved; TypeError/ValueError when a field has the wrong type (the file is reset)."""
        if not isinstance(value, dict):
            raise TypeError("job is not an object")
        source = value.get("source", "full")
        if source not in ("full", "delta"):
            raise ValueError(f"job source {source!r}")
        slot = value.get("slot")
        if slot not in (None, "a", "b"):
            raise ValueError(f"job slot {slot!r}")
        return cls(
            offer=Offer.from_json(value["offer"]),
            source=source,
            delta_refused=_opt(value.get("delta_refused"), str, "delta_refused"),
            slot=slot,
            from_version=_opt(value.get("from_version"), int, "from_version"),
            announced=_opt(value.get("announced"), str, "announced"),
            timings={str(k): float(v) for k, v in _dict(value.get("timings"), "timings").items()},
            bytes_received=int(value.get("bytes_received", 0)),
        )


def _opt(value: Any, kind: type, what: str) -> Any:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise TypeError(f"{what} must be {kind.__name__} or null, got {type(value).__name__}")
    return value


def _dict(value: Any, what: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _interval(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"poll_interval must be a positive number, got {value!r}")
    return float(value)


@dataclass
class Persisted:
    state: State = State.IDLE
    job: Job | None = None
    crashes: dict[str, int] = field(default_factory=dict)  # state → unclean restarts, for the current job
    clean_exit: bool = False
    failed: dict[int, str] = field(default_factory=dict)  # version → reason
    etag: str | None = None  # of the last offer fully handled: sent as If-None-Match …
    etag_version: int | None = None  # … but only while the device still runs the version it was given for
    poll_interval: float | None = None  # the server's last word on it
    boot_attempts: dict[str, int] = field(default_factory=dict)  # slot → starts that began loading it, unfinished

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "job": None if self.job is None else self.job.to_json(),
            "crashes": self.crashes,
            "clean_exit": self.clean_exit,
            "failed": {str(v): r for v, r in self.failed.items()},
            "etag": self.etag,
            "etag_version": self.etag_version,
            "poll_interval": self.poll_interval,
            "boot_attempts": self.boot_attempts,
        }

    @classmethod
    def from_json(cls, value: Any) -> Persisted:
        if not isinstance(value, dict):
            raise ValueError("state file is not an object")
        job = value.get("job")
        return cls(
            state=State(value.get("state", "idle")),
            job=None if job is None else Job.from_json(job),
            crashes={str(k): int(v) for k, v in _dict(value.get("crashes"), "crashes").items()},
            clean_exit=bool(value.get("clean_exit", False)),
            failed={int(v): str(r) for v, r in _dict(value.get("failed"), "failed").items()},
            etag=_opt(value.get("etag"), str, "etag"),
            etag_version=_opt(value.get("etag_version"), int, "etag_version"),
            poll_interval=_interval(value.get("poll_interval")),
            boot_attempts={
                str(k): int(v) for k, v in _dict(value.get("boot_attempts"), "boot_attempts").items() if k in ("a", "b")
            },
        )

    def remember_failed(self, version: int, reason: str) -> None:
        self.failed[version] = reason
        while len(self.failed) > MAX_FAILED_REMEMBERED:
            del self.failed[min(self.failed)]


class StateStore:
    def __init__(self, path: Path, *, durable: bool = True, disk: Disk | None = None) -> None:
        self.path = path
        self.durable = durable
        self.disk = disk or Disk()
        self.reset: str | None = None  # why the file found at start was thrown away, if it was

    def load(self) -> Persisted:
        """The last saved record. A garbled one (it cannot be torn, but a disk can rot) or one with a
        field of the wrong type starts afresh: the slots, not this file, decide which model is served."""
        try:
            value = read_json(self.path)
            return Persisted() if value is None else Persisted.from_json(value)
        except (OSError, ValueError, KeyError, TypeError, ProtocolError) as e:
            log.warning("state file %s is unreadable (%s); starting from idle", self.path, e)
            self.reset = f"{type(e).__name__}: {e}"
            return Persisted()

    def save(self, record: Persisted, *, sync: bool = True) -> None:
        """Atomic always; fsynced unless `sync=False` (a step marker: see Device.enter)."""
        self.disk.write_json(self.path, record.to_json(), durable=self.durable and sync)
