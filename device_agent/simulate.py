"""`device-agent simulate`: a fleet of N devices in one asyncio process, for rollouts and load.

Each simulated device is a full :class:`~device_agent.device.Device`: its own enrollment, token,
state file, event queue, slots and downloads under DIR/<device_id>/, and the same state machine
as a real agent, doing the real download, delta and verification work. What they share is what a
fleet of identical boards would have in common anyway: one connection pool, and one ONNX Runtime
session (with its golden verdict) per model version (:class:`~device_agent.sessions.SharedRuntime`),
and each distinct ONNX file is stored once and hard-linked into the slots. Writes are not fsynced:
power-loss durability means nothing for a simulation, and fsyncs would serialise the fleet.

With `inference_rate` > 0 the devices also serve: each runs the model it holds on its golden inputs
and reports `metrics` events with the latency and confidence measured, so that rollout gates see
the real difference between versions (:mod:`device_agent.telemetry`; the fleet's total rate is
bounded by a token bucket and a small pool of inference threads, not a thread per device).

A line on stderr shows the fleet's versions as they move; the summary goes to stdout. SIGTERM ends
the run like the timeout does (the summary is still printed), so a fleet with no target version can
be stopped by whoever started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import artifact as A

from .agent import http_client
from .config import AgentConfig
from .device import Device
from .enroll import ensure_credentials
from .fsutil import DirLock
from .machine import run_machine
from .sessions import SharedRuntime
from .state import State
from .telemetry import Telemetry
from .workers import update_executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetOptions:
    server: str
    model: str
    enroll_secret: str
    devices: int
    trust: A.TrustPolicy | None
    model_dir: Path | None = None  # default: a temporary directory, removed at the end
    until_version: int | None = None
    timeout: float | None = None
    poll_interval: float = 5.0
    concurrency: int = 64  # HTTP connections shared by the fleet
    id_prefix: str | None = None
    inference_rate: float = 0.0  # inferences per second per device; 0: the devices serve nothing
    metrics_interval: float = 10.0  # seconds between each device's `metrics` events
    inference_workers: int | None = None  # threads running inferences (default: CPU cores - 1)
    root: A.TrustState | None = None  # the root of trust every simulated device starts from


@dataclass
class FleetReport:
    devices: int
    elapsed_s: float
    versions: dict[str, int]
    failed: dict[str, int]
    reached: int
    target: int | None
    time_to_target_s: float | None
    bytes: dict[str, int]
    full_payload_bytes: int  # what the same installs would have cost without deltas
    transient_retries: int
    delta_fallbacks: int
    swap_ms_median: float | None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    telemetry: dict[str, Any] | None = None  # with an inference rate: what was served, per version

    @property
    def ok(self) -> bool:
        return not self.failed and (self.target is None or self.reached == self.devices)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ok": self.ok}


class Fleet:
    def __init__(self, options: FleetOptions, root: Path, out: TextIO) -> None:
        self.options = options
        self.root = root
        self.out = out
        self.devices: list[Device] = []
        self.started = time.monotonic()
        self.reached_at: dict[int, float] = {}
        self.telemetry: Telemetry | None = None

    def config(self, device_id: str) -> AgentConfig:
        o = self.options
        return AgentConfig(
            server=o.server,
            model=o.model,
            model_dir=self.root / device_id,
            trust=o.trust,
            root=o.root,
            device_id=device_id,
            enroll_secret=o.enroll_secret,
            poll_interval=o.poll_interval,
            force_poll_interval=True,
            backoff_base=min(1.0, o.poll_interval),
            backoff_max=max(10.0, o.poll_interval * 4),
            metrics_interval=3600.0,
            threads=1,
            durable=False,
        )

    def versions(self) -> Counter[str]:
        return Counter("none" if d.holder.version is None else f"v{d.holder.version}" for d in self.devices)

    def failures(self) -> Counter[str]:
        target = self.options.until_version
        return Counter(
            reason for d in self.devices for v, reason in dict(d.record.failed).items() if target is None or v == target
        )

    def done(self) -> bool:
        target = self.options.until_version
        if target is None:
            return False
        return all((d.holder.version or 0) >= target or target in d.record.failed for d in self.devices)

    def line(self) -> str:
        versions = "  ".join(f"{k}: {n}" for k, n in sorted(self.versions().items()))
        busy = sum(1 for d in self.devices if d.state not in (State.IDLE, State.CHECKING))
        failed = sum(self.failures().values())
        delta = sum(d.bytes_by_source["delta"] for d in self.devices)
        full = sum(d.bytes_by_source["full"] for d in self.devices)
        serving = "" if self.telemetry is None else f"{self.telemetry.line()} | "
        return (
            f"fleet {len(self.devices)} devices | {versions} | updating {busy} | failed {failed} | "
            f"delta {delta / 1e6:.1f} MB  full {full / 1e6:.1f} MB | {serving}{time.monotonic() - self.started:.1f} s"
        )

    async def show_progress(self) -> None:
        tty = self.out.isatty()
        last_print = 0.0
        while True:
            now = time.monotonic()
            target = self.options.until_version
            for i, d in enumerate(self.devices):
                if target is not None and i not in self.reached_at and (d.holder.version or 0) >= target:
                    self.reached_at[i] = now - self.started
            if tty:
                self.out.write("\r\x1b[2K" + self.line())
                self.out.flush()
            elif now - last_print >= 5.0:
                self.out.write(self.line() + "\n")
                self.out.flush()
                last_print = now
            await asyncio.sleep(0.25)

    def report(self) -> FleetReport:
        installs = [i for d in self.devices for i in d.installs]
        swaps = sorted(i["verified_to_serving_ms"] for i in installs if "verified_to_serving_ms" in i)
        target = self.options.until_version
        return FleetReport(
            devices=len(self.devices),
            elapsed_s=round(time.monotonic() - self.started, 2),
            versions=dict(self.versions()),
            failed=dict(self.failures()),
            reached=len(self.reached_at),
            target=target,
            time_to_target_s=round(max(self.reached_at.values()), 2)
            if target is not None and len(self.reached_at) == len(self.devices)
            else None,
            bytes={k: sum(d.bytes_by_source[k] for d in self.devices) for k in ("delta", "full")},
            full_payload_bytes=sum(int(i.get("payload_bytes", 0)) for i in installs),
            transient_retries=sum(d.retries for d in self.devices),
            delta_fallbacks=sum(1 for i in installs if i.get("delta_refused")),
            swap_ms_median=round(swaps[len(swaps) // 2], 2) if swaps else None,
        )


async def _staggered(device: Device, interval: float) -> None:
    """Devices do not boot in the same millisecond: spread the first polls over one interval."""
    await device.sleep(random.uniform(0, interval))
    await run_machine(device)


def _stop_on_sigterm() -> asyncio.Event:
    """An event SIGTERM sets (ending the run with its report); unset for ever off the main thread."""
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def run_fleet(options: FleetOptions, out: TextIO = sys.stderr) -> FleetReport:
    """Run the fleet until every device reaches `until_version` (or failed it), or the timeout."""
    if options.devices < 1:
        raise ValueError("a fleet needs at least one device")
    if options.inference_rate < 0 or options.metrics_interval <= 0:
        raise ValueError("the inference rate must be ≥ 0 and the metrics interval positive")
    asyncio.get_running_loop().set_default_executor(update_executor(0))  # no /predict to protect
    temp = options.model_dir is None
    root = Path(tempfile.mkdtemp(prefix="ota-fleet-")) if options.model_dir is None else options.model_dir
    root.mkdir(parents=True, exist_ok=True)
    lock = DirLock(root)
    lock.acquire()
    prefix = options.id_prefix or ("sim" if not temp else f"sim-{secrets.token_hex(3)}")
    fleet = Fleet(options, root, out)
    runtime = SharedRuntime(threads=1)
    gate = asyncio.Semaphore(options.concurrency)
    tasks: list[asyncio.Task[None]] = []
    reporters: list[asyncio.Task[None]] = []
    stop = _stop_on_sigterm()
    try:
        async with http_client(timeout=60.0, connections=options.concurrency) as http:
            for i in range(options.devices):
                device_id = f"{prefix}-{i + 1:04d}"
                device = Device(
                    fleet.config(device_id),
                    http=http,
                    runtime=runtime,
                    shared_models=root / "models",
                    lock=False,
                    gate=gate,
                )
                await device.start()
                fleet.devices.append(device)
            if options.inference_rate > 0:
                fleet.telemetry = Telemetry(
                    fleet.devices,
                    rate=options.inference_rate,
                    interval=options.metrics_interval,
                    workers=options.inference_workers,
                )
            progress = asyncio.create_task(fleet.show_progress())
            await asyncio.gather(*(ensure_credentials(d) for d in fleet.devices))
            for d in fleet.devices:
                reporters.append(asyncio.create_task(d.reporter.report_forever()))
                tasks.append(asyncio.create_task(_staggered(d, options.poll_interval)))
            tasks += reporters
            if fleet.telemetry is not None:
                tasks += [asyncio.create_task(fleet.telemetry.pace()), asyncio.create_task(fleet.telemetry.report())]
            deadline = None if options.timeout is None else fleet.started + options.timeout
            while not fleet.done() and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)  # let the progress line show the final state
            progress.cancel()
            report = fleet.report()
            for d in fleet.devices:
                d.request_stop()
            # A reporter stops by itself once its batch in flight is answered: cut short, the server
            # would have the batch while the queue still held it, and the final flush would send it again.
            await asyncio.wait(reporters, timeout=5.0)
            for t in tasks:  # a request in flight is abandoned: the state on disk is where it resumes
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if fleet.telemetry is not None:
                await asyncio.to_thread(fleet.telemetry.close)  # the inferences in flight finish …
                fleet.telemetry.emit_all()  # … and the last windows are queued with the rest
                report.telemetry = fleet.telemetry.summary()
            await asyncio.gather(*(d.reporter.flush(5.0) for d in fleet.devices), return_exceptions=True)
            if out.isatty():
                out.write("\n")
            out.write(fleet.line() + "\n")
            return report
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        for t in tasks:
            t.cancel()
        if fleet.telemetry is not None:
            fleet.telemetry.close()
        for d in fleet.devices:
            with contextlib.suppress(OSError):
                d.record.clean_exit = True
                d.save()
        lock.release()
        if temp:
            shutil.rmtree(root, ignore_errors=True)


def format_report(report: FleetReport) -> str:
    saved = report.full_payload_bytes - report.bytes["delta"] - report.bytes["full"]
    lines = [
        f"devices           {report.devices}",
        f"versions          {', '.join(f'{k}: {n}' for k, n in sorted(report.versions.items()))}",
        f"target            {'-' if report.target is None else f'v{report.target}'}"
        f" ({report.reached}/{report.devices} reached"
        + (f" in {report.time_to_target_s} s)" if report.time_to_target_s is not None else ")"),
        f"failed            {report.failed or 0}",
        f"bytes: deltas     {report.bytes['delta']:,}",
        f"bytes: full       {report.bytes['full']:,}",
        f"full-payload cost {report.full_payload_bytes:,} (saved {max(saved, 0):,} by deltas)",
        f"delta fallbacks   {report.delta_fallbacks}",
        f"transient retries {report.transient_retries}",
        f"median swap       {report.swap_ms_median} ms (verified bytes → serving, golden set included)",
        f"elapsed           {report.elapsed_s} s",
    ]
    t = report.telemetry
    if t is not None:
        lines.append(
            f"inferences        {t['served']:,} served, {t['served_per_s']}/s of {t['asked_per_s']}/s asked"
            f" ({t['dropped']:,} dropped with all {t['workers']} workers busy, {t['errors']} errors);"
            f" {t['metrics_events']:,} metrics events"
        )
        for version, s in t["versions"].items():
            lines.append(
                f"  {version:<15} p50 {s['p50_ms']} ms  p95 {s['p95_ms']} ms  mean confidence {s['mean_confidence']}"
                f"  ({s['requests']:,} requests)"
            )
    return "\n".join(lines)
