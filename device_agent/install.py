"""One install in memory: the record the update states hand to each other (mender's states carry theirs).

An :class:`Install` is created when `checking` accepts an offer (or when a restart finds a job in
DIR/state.json) and is passed from state to state by :mod:`device_agent.machine`; each state returns
the record the next one needs, and the install's data ends with it: nothing is cleared by hand.

Two halves:

- :attr:`Install.job` is the persisted half (:class:`~device_agent.state.Job`, the same object as
  `Persisted.job`): what a restart resumes from. It changes in place and is saved by the machine.
- the other fields live only in memory (verified bytes, the validated session, the moment the bytes
  passed the door, the background slot write, download progress); after a restart the states
  rebuild them from what is on disk, through the door again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

import artifact as A

from .runtime import LoadedModel
from .state import Job

log = logging.getLogger(__name__)


class Progress:
    """Bytes of the current download on disk, of how many: shown in the status and logged at every quarter.

    Written by the update loop, read by the HTTP thread that serves /status (one tuple, replaced whole).
    """

    def __init__(self) -> None:
        self.value: tuple[int, int] | None = None  # (received, total), None before the first chunk

    def update(self, received: int, total: int) -> None:
        before = self.value[0] if self.value else 0
        self.value = (received, total)
        if total >= 1 << 20 and received * 4 // total != before * 4 // total:
            log.info("downloading: %d%% of %.1f MB", received * 100 // total, total / 1e6)


@dataclass(frozen=True)
class Install:
    """The update in progress. States make the next record with `dataclasses.replace`."""

    job: Job  # persisted (DIR/state.json): the offer, the source, the slot, timings …
    verified: A.VerifiedManifest | None = None  # the offer's manifest through door checks 1–5, once per install
    staged: tuple[A.VerifiedManifest, bytes] | None = None  # verified ONNX bytes, verifying → … → swapping
    candidate: LoadedModel | None = None  # the validated session, validating → swapping
    verified_at: float | None = None  # perf_counter when the ONNX bytes passed the door
    verified_wall: datetime | None = None  # the same moment, for the slot's expiry record
    slot_write: asyncio.Future[None] | None = None  # the background write of `job.slot`, staging → swapping
    progress: Progress = field(default_factory=Progress)

    @property
    def version(self) -> int:
        return self.job.version
