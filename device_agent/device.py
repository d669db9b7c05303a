"""One device: its storage, the update loop's lifecycle, and the parts the states work with.

:class:`Device` is the context the states of :mod:`device_agent.machine` work on. It owns no
policy: it fetches, persists and reports. A real agent runs one; the simulator runs hundreds in one
event loop, sharing an `httpx.AsyncClient` and a :class:`~device_agent.sessions.SharedRuntime`.
The data of one install does not live here: it travels from state to state in an
:class:`~device_agent.install.Install`. Its neighbours: :mod:`~device_agent.boot` (slot check and
fallback at start), :mod:`~device_agent.enroll` (credentials), :mod:`~device_agent.reporting`
(events), :mod:`~device_agent.status` (the /status view).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx

import artifact as A

from .boot import boot
from .config import AgentConfig
from .download import DownloadDir
from .events import EventQueue
from .fsutil import DirLock
from .holder import ModelHolder
from .install import Install
from .policy import Backoff, jittered
from .protocol import ServerClient, poll_interval
from .reporting import Reporter
from .sessions import Runtime
from .slots import SlotStore
from .state import Persisted, State, StateStore
from .trust import TrustKeeper

log = logging.getLogger(__name__)


class Device:
    def __init__(
        self,
        config: AgentConfig,
        *,
        http: httpx.AsyncClient,
        runtime: Runtime,
        shared_models: Path | None = None,
        lock: bool = True,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.config = config
        root = config.model_dir
        self.disk = disk = config.disk
        disk.make_dir(root, mode=0o700)
        self._lock = DirLock(root, disk) if lock else None  # the simulator locks the fleet's root once instead
        self.store = StateStore(root / "state.json", durable=config.durable, disk=disk)
        self.slots = SlotStore(root / "slots", durable=config.durable, shared=shared_models, disk=disk)
        self.downloads = DownloadDir(
            root / "downloads",
            durable=config.durable,
            disk=disk,
            min_rate=config.download_min_rate,
            stall_window=config.download_stall_window,
        )
        self.read_only = False  # the model directory cannot be written: serve what is installed, no updates
        self.files_reset: list[str] = []  # files found unreadable at start and started afresh (shown in /status)
        self.storage_error: str | None = None  # the last write that failed (a full disk), until one succeeds
        self.reported: set[tuple[str, int]] = set()  # (reason, version) of `failed` sent for a passing fault
        self._reporter: Reporter | None = None  # opened in start(), under the directory lock
        self.holder = ModelHolder(
            on_release=lambda v: log.debug("version %s drained and released", v), concurrency=config.concurrency
        )
        self.client = ServerClient(http, config.server, gate=gate)
        self.trust_keeper = TrustKeeper(
            root / "trust.json", config.root, config.trust, disk, durable=config.durable
        )  # read back in start()
        self.runtime = runtime
        self.record = Persisted()
        self.backoff = Backoff(config.backoff_base, config.backoff_max)
        self.state = State.IDLE
        self.install: Install | None = None  # the install the current state works on (set by enter(), for status)
        self.device_id: str | None = config.device_id
        self.last_error: dict[str, Any] | None = None
        self.renew_at: float | None = None  # when the token is renewed (config.clock); None: never (see enroll.py)
        self.installs: list[dict[str, Any]] = []  # replaced, never mutated: the HTTP thread reads it
        self.bytes_by_source = {"delta": 0, "full": 0}
        self.retries = 0  # transient failures met by the update loop
        self.delta_misses = 0  # error answers to the current job's delta URL (see machine.DELTA_TRIES)
        self.said_verified: int | None = None  # the version a `verified` event was emitted for
        self._slot_write: asyncio.Future[None] | None = None  # the latest background slot write, of any install
        self._stop = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Lock the directory, read the persisted record, load the active slot (or fall back)."""
        if self._lock is not None:
            self._lock.acquire()
            self.read_only = not self._lock.writable
        queue = EventQueue(self.config.model_dir / "events.jsonl", durable=self.config.durable, disk=self.disk)
        self._reporter = Reporter(queue, client=self.client, holder=self.holder, config=self.config, stop=self._stop)
        self.record = self.store.load()
        trust_reset = self.trust_keeper.load()
        for name, reset in (
            ("trust.json", trust_reset and f"{trust_reset}; starting from the root given"),
            ("state.json", self.store.reset),
            ("events.jsonl", f"{queue.dropped_lines} unreadable line(s) dropped" if queue.dropped_lines else None),
            ("slots/", "a file stood in its place" if self.slots.reset else None),
            ("downloads/", "a file stood in its place" if self.downloads.reset else None),
        ):
            if reset:
                self.note_reset(name, reset)
        await boot(self)

    @property
    def trust(self) -> A.TrustPolicy:
        """The publisher keys artifacts are verified with now (they change when the trust chain does)."""
        return self.trust_keeper.policy()

    def note_reset(self, name: str, why: str) -> None:
        """A file the agent read back was unusable and started afresh: logged, and shown in /status."""
        log.warning("%s was unusable (%s) and was reset", name, why)
        self.files_reset = [*self.files_reset[-9:], f"{name}: {why}"]

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def request_stop(self) -> None:
        self._stop.set()
        if self._reporter is not None:
            self._reporter.wake()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def sleep(self, seconds: float) -> None:
        """Wait, but wake at once when the device is asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))

    def poll_delay(self) -> float:
        interval = self.config.poll_interval
        asked = poll_interval(self.record.poll_interval)  # state.json is read back: bounded again
        if asked is not None and not self.config.force_poll_interval:
            interval = asked
        return jittered(interval)

    def save(self, *, sync: bool = True) -> bool:
        """Persist the record. Never raises: on a full or read-only disk the record lives on in memory
        (a restart then resumes a step earlier, which every step allows) and /status says why."""
        try:
            self.store.save(self.record, sync=sync)
        except OSError as e:
            if self.storage_error is None:
                log.error("state not saved: %s", e)
            self.storage_error = f"{type(e).__name__}: {e}"
            return False
        self.storage_error = None
        return True

    def enter(self, state: State, install: Install | None) -> None:
        """Record the state before its work starts: this is what a restart resumes from.

        The step marker is an atomic rename, not fsynced: a process crash (kill -9, a segfault in a
        hostile model, the OOM killer: what the crash-loop cap is about) cannot lose it, as it is in
        the page cache. A power cut may lose the last few markers; the agent then resumes a step
        earlier, which is safe because every step re-verifies what it reads. Facts that must survive
        a power cut (a job's end, a failed version, the crash count) are saved with fsync.
        """
        self.state, self.install = state, install
        if self.record.job is None and self.record.state is State.IDLE and state in (State.IDLE, State.CHECKING):
            return  # nothing in flight: an idle poll need not touch the disk
        self.record.state = state if self.record.job is not None else State.IDLE
        self.save(sync=False)

    def write_slot(self, slot: str, verified: A.VerifiedManifest, onnx: bytes) -> asyncio.Future[None]:
        """Write and fsync the slot on a thread: the disk works while the CPU validates the model.

        A write left over from an abandoned install is waited for first: two writers on one slot
        could leave it holding files of two versions. A write nobody awaits (its install ended)
        may fail quietly: the next write to that slot starts over.
        """
        previous = self._slot_write

        def write() -> None:
            self.slots.write(slot, verified, onnx)
            self.slots.sync(slot)

        async def stage() -> None:
            if previous is not None:
                with contextlib.suppress(OSError, ValueError):  # that job has ended; its failure is moot
                    await previous
            await asyncio.to_thread(write)

        self._slot_write = asyncio.ensure_future(stage())
        self._slot_write.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._slot_write

    def crash_point(self, name: str) -> None:
        """Test seam: with `config.crash_at == name` the process kills itself (SIGKILL) right here."""
        if self.config.crash_at == name:
            log.warning("crash point %s reached: killing this process", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def add_install(self, record: dict[str, Any]) -> None:
        self.installs = [*self.installs[-99:], record]

    # ----------------------------------------------------------------- events

    @property
    def reporter(self) -> Reporter:
        if self._reporter is None:
            raise RuntimeError("start() opens the event queue")
        return self._reporter

    @property
    def events_queued(self) -> int:
        return 0 if self._reporter is None else len(self._reporter.queue)

    def emit(self, type_: str, version: int | None, **fields: Any) -> None:
        self.reporter.emit(type_, version, **fields)
