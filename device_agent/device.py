"""One device: its storage, credentials, boot-time slot check, event reporter and update loop.

:class:`Device` is the context the states of :mod:`device_agent.machine` work on. It owns no
policy: it fetches, persists and reports. A real agent runs one; the simulator runs hundreds in one
event loop, sharing an `httpx.AsyncClient` and a :class:`~device_agent.sessions.SharedRuntime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

import artifact as A

from .config import AgentConfig
from .download import DownloadDir
from .errors import AuthError, EnrollmentError, OfferError, SlotError, TransientError, ValidationFailedError
from .events import EventQueue
from .fsutil import DirLock, atomic_write_json, read_json
from .holder import ModelHolder
from .policy import Backoff, jittered, reason_code
from .protocol import Credentials, Offer, ServerClient, make_event, now_rfc3339
from .runtime import LoadedModel
from .sessions import Runtime
from .slots import SLOTS, SlotContent, SlotStore, other
from .state import Persisted, State, StateStore

log = logging.getLogger(__name__)


def _lower_priority(niceness: int) -> None:
    """Runs in each update worker thread: Linux keeps a nice value per thread, and the threads these
    workers start (the golden-set pool) inherit it. Raising one's own niceness needs no privilege."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))


def update_executor(niceness: int) -> ThreadPoolExecutor:
    """The event loop's default executor, where delta apply, decode, session build and golden run happen.

    With `niceness` > 0 these threads run below the ones serving /predict: on a saturated device
    inference wins the CPU and the swap waits. The default is 0 because the tail stayed within the
    goal without it (bench/hotswap.py: p99 during swaps 1.3× steady) while swaps took 1.6× longer
    with it; a device whose serving latency matters more than update speed can turn it on.
    """
    workers = min(32, (os.cpu_count() or 1) + 4)
    if niceness <= 0:
        return ThreadPoolExecutor(max_workers=workers)
    return ThreadPoolExecutor(max_workers=workers, initializer=_lower_priority, initargs=(niceness,))


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
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = DirLock(root) if lock else None  # the simulator locks the fleet's root once instead
        self.store = StateStore(root / "state.json", durable=config.durable)
        self.slots = SlotStore(root / "slots", durable=config.durable, shared=shared_models)
        self.downloads = DownloadDir(root / "downloads", durable=config.durable)
        self.events: EventQueue | None = None  # opened in start(), under the directory lock
        self.holder = ModelHolder(
            on_release=lambda v: log.debug("version %s drained and released", v), concurrency=config.concurrency
        )
        self.client = ServerClient(http, config.server, gate=gate)
        self.runtime = runtime
        self.record = Persisted()
        self.backoff = Backoff(config.backoff_base, config.backoff_max)
        self.state = State.IDLE
        self.device_id: str | None = config.device_id
        self.staged: tuple[A.VerifiedManifest, bytes] | None = None  # verified ONNX bytes, verifying → staging
        self.candidate: LoadedModel | None = None  # the validated session, validating → swapping
        self.verified_at: float | None = None  # perf_counter when the ONNX bytes passed the door
        self.verified_wall: datetime | None = None  # the same moment, for the slot's expiry record
        self.progress: tuple[int, int] | None = None
        self.last_error: dict[str, Any] | None = None
        self.installs: list[dict[str, Any]] = []  # replaced, never mutated: the HTTP thread reads it
        self.bytes_by_source = {"delta": 0, "full": 0}
        self.retries = 0  # transient failures met by the update loop
        self._slot_write: asyncio.Future[None] | None = None  # the latest background slot write
        self._slot_write_for: str | None = None  # the slot the current job is writing, if any
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Lock the directory, read the persisted record, load the active slot (or fall back)."""
        if self._lock is not None:
            self._lock.acquire()
        self.events = EventQueue(self.config.model_dir / "events.jsonl", durable=self.config.durable)
        self.record = self.store.load()
        await self.boot()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def request_stop(self) -> None:
        self._stop.set()
        self._kick.set()

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
        if self.record.poll_interval and not self.config.force_poll_interval:
            interval = self.record.poll_interval
        return jittered(interval)

    def save(self, *, sync: bool = True) -> None:
        self.store.save(self.record, sync=sync)

    def enter(self, state: State) -> None:
        """Record the state before its work starts: this is what a restart resumes from.

        The step marker is an atomic rename, not fsynced: a process crash (kill -9, a segfault in a
        hostile model, the OOM killer: what the crash-loop cap is about) cannot lose it, as it is in
        the page cache. A power cut may lose the last few markers; the agent then resumes a step
        earlier, which is safe because every step re-verifies what it reads. Facts that must survive
        a power cut (a job's end, a failed version, the crash count) are saved with fsync.
        """
        self.state = state
        if self.record.job is None and self.record.state is State.IDLE and state in (State.IDLE, State.CHECKING):
            return  # nothing in flight: an idle poll need not touch the disk
        self.record.state = state if self.record.job is not None else State.IDLE
        self.save(sync=False)

    def stage_in_background(self, slot: str, verified: A.VerifiedManifest, onnx: bytes) -> None:
        """Write and fsync the slot on a thread: the disk works while the CPU validates the model.

        A write left over from an abandoned job is waited for first: two writers on one slot could
        leave it holding files of two versions.
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

        self._slot_write, self._slot_write_for = asyncio.ensure_future(stage()), slot

    async def slot_on_disk(self, slot: str) -> None:
        """The barrier before the pointer may name `slot`: its files are written and fsynced."""
        if self._slot_write is not None and self._slot_write_for == slot:
            await self._slot_write
        else:
            await asyncio.to_thread(self.slots.sync, slot)  # restarted since staging: make sure it is on disk

    def abandon_slot_write(self) -> None:
        """The job ended: its write, if any, may finish, but nothing waits for it but the next write."""
        self._slot_write_for = None
        if self._slot_write is not None:
            self._slot_write.add_done_callback(lambda f: f.cancelled() or f.exception())

    def crash_point(self, name: str) -> None:
        """Test seam: with `config.crash_at == name` the process kills itself (SIGKILL) right here."""
        if self.config.crash_at == name:
            log.warning("crash point %s reached: killing this process", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def add_install(self, record: dict[str, Any]) -> None:
        self.installs = [*self.installs[-99:], record]

    def on_progress(self, received: int, total: int) -> None:
        """Long downloads show progress: in the status, and in the log at every quarter."""
        before = self.progress[0] if self.progress else 0
        self.progress = (received, total)
        if total >= 1 << 20 and received * 4 // total != before * 4 // total:
            log.info("downloading: %d%% of %.1f MB", received * 100 // total, total / 1e6)

    # ----------------------------------------------------------------- credentials

    @property
    def _credentials_path(self) -> Path:
        return self.config.model_dir / "credentials.json"

    async def ensure_credentials(self) -> None:
        """Enroll once; the token is kept in DIR (mode 0600) and reused on every later start."""
        cfg = self.config
        if cfg.token_file is not None:
            self.client.token = cfg.token_file.read_text().strip()
            return
        stored = read_json(self._credentials_path)
        if isinstance(stored, dict) and stored.get("token") and stored.get("server") == cfg.server:
            self.client.token = str(stored["token"])
            self.device_id = str(stored.get("device_id") or self.device_id)
            return
        if not cfg.enroll_secret:
            raise EnrollmentError("no stored token: pass an enrollment secret or a token file")
        backoff = Backoff(cfg.backoff_base, cfg.backoff_max)
        while True:
            try:
                creds = await self.client.enroll(
                    secret=cfg.enroll_secret, model=cfg.model, device_id=cfg.device_id, labels=cfg.labels
                )
                break
            except TransientError as e:
                delay = backoff.next_delay(e.retry_after)
                log.warning("enrollment: %s; retrying in %.1f s", e, delay)
                await self.sleep(delay)
                if self.stopping:
                    raise
        self._store_credentials(creds)

    def _store_credentials(self, creds: Credentials) -> None:
        self.device_id = creds.device_id
        value = {"device_id": creds.device_id, "token": creds.token, "server": self.config.server}
        atomic_write_json(self._credentials_path, value, mode=0o600, durable=self.config.durable)
        log.info("enrolled as %s", creds.device_id)

    # ----------------------------------------------------------------- boot

    async def boot(self) -> None:
        """Serve the active slot if it still passes the door; else the other one, reported `rolled_back`."""
        active = self.slots.active()
        order = [active, other(active)] if active else sorted(SLOTS, key=lambda s: -(self.slots.version(s) or 0))
        refused: list[tuple[str, Exception]] = []
        for slot in order:
            if self.slots.version(slot) is None and slot != active:
                continue
            try:
                content = await asyncio.to_thread(
                    self.slots.load, slot, trust=self.config.trust, model=self.config.model
                )
                model = await asyncio.to_thread(self.runtime.load, content.onnx, content.verified)
            except (SlotError, A.ArtifactError, ValidationFailedError) as e:
                log.error("slot %s cannot be served: %s", slot, e)
                refused.append((slot, e))
                continue
            self._serve_booted(content, model, active, refused)
            return
        if refused:
            _, why = refused[0]
            self.emit("rolled_back", None, reason=reason_code(why), detail=str(why), from_version=None)

    def _serve_booted(
        self, content: SlotContent, model: LoadedModel, active: str | None, refused: list[tuple[str, Exception]]
    ) -> None:
        if content.slot != active:
            self.slots.activate(content.slot)
            if active is not None:
                _, why = refused[0]
                bad = self.slots.version(active)
                log.warning(
                    "rolled back from slot %s (v%s) to slot %s (v%s)", active, bad, content.slot, content.version
                )
                self.emit("rolled_back", content.version, reason=reason_code(why), detail=str(why), from_version=bad)
        self.holder.swap(model)
        log.info("serving %s v%d from slot %s", self.config.model, content.version, content.slot)

    # ----------------------------------------------------------------- the door, for offers

    def verify(self, offer: Offer) -> A.VerifiedManifest:
        """Door checks 1–5 on the offered manifest, against the version being served now."""
        verified = A.verify_manifest(
            offer.manifest_bytes,
            offer.signatures,
            trust=self.config.trust,
            expected_model=self.config.model,
            installed_version=self.holder.version,
        )
        m = verified.manifest
        if (offer.model, offer.version) != (m.model, m.version):
            raise OfferError(f"offer names {offer.model} v{offer.version}, its signed manifest {m.model} v{m.version}")
        return verified

    # ----------------------------------------------------------------- events

    @property
    def queue(self) -> EventQueue:
        if self.events is None:
            raise RuntimeError("start() opens the event queue")
        return self.events

    def emit(self, type_: str, version: int | None, **fields: Any) -> None:
        self.queue.put(make_event(type_, version, **fields))
        self._kick.set()

    async def report_forever(self) -> None:
        """Deliver queued events as they come and emit `metrics` periodically, whatever the server does."""
        queue = self.queue
        backoff = Backoff(self.config.backoff_base, self.config.backoff_max)
        next_metrics = time.monotonic() + self.config.metrics_interval
        retry_at = 0.0
        while not self.stopping:
            now = time.monotonic()
            wake = next_metrics
            if len(queue):
                wake = min(wake, max(now, retry_at))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=max(0.0, wake - now))
            self._kick.clear()
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + self.config.metrics_interval
                summary = self.holder.metrics.take()
                if summary is not None:
                    self.emit("metrics", self.holder.version, **summary)
            if not len(queue) or time.monotonic() < retry_at:
                continue
            try:
                await queue.flush(self.client)
                backoff.reset()
                retry_at = 0.0
            except (TransientError, AuthError) as e:
                delay = backoff.next_delay(getattr(e, "retry_after", None), slow=isinstance(e, AuthError))
                retry_at = time.monotonic() + delay
                log.info("events not delivered (%s); %d queued, retrying in %.1f s", e, len(queue), delay)

    async def flush_events(self, timeout: float) -> None:
        """Best effort on shutdown: whatever is not sent stays queued on disk for the next start."""
        if self.events is None or not len(self.events):
            return
        try:
            await asyncio.wait_for(self.events.flush(self.client), timeout)
        except (TransientError, AuthError, TimeoutError) as e:
            log.info("%d events stay queued for the next start (%s)", len(self.events), e or "timeout")

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        model = self.holder.model
        job = self.record.job
        return {
            "device_id": self.device_id,
            "model": self.config.model,
            "version": self.holder.version,
            "state": self.state.value,
            "slot": self.slots.active(),
            "target_version": None if job is None else job.version,
            "download": None
            if self.progress is None or job is None
            else {"source": job.source, "received": self.progress[0], "length": self.progress[1]},
            "labels": None if model is None else list(model.manifest.labels),
            "failed_versions": {str(v): r for v, r in dict(self.record.failed).items()},
            "last_error": self.last_error,
            "last_install": self.installs[-1] if self.installs else None,
            "installs": list(self.installs),
            "events_queued": 0 if self.events is None else len(self.events),
            "requests_served": self.holder.metrics.total,
            "at": now_rfc3339(),
        }
