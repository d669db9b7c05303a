"""Real inference telemetry for a simulated fleet: what the rollout gates read.

Each simulated device runs the model it holds, with the same ONNX Runtime session the fleet shares
per version, on that version's golden inputs (seed cases regenerated, image cases decoded, exactly
as the golden check does). Latency is the CPU time of the session run alone, on the one thread that
runs it (the shared sessions have one intra-op thread): the wall time would measure the host — a
worker waiting for the GIL behind the fleet's event loop, or for a core behind other processes —
and that wait, the same for every version, would hide the model's own cost (on a loaded 2-core
machine, a model twice as costly measured 1.5× its peer in wall-time p95, 2× in CPU time).
Confidence is the top-1 softmax score; both go into
a :class:`~device_agent.holder.MetricsWindow` kept per device *and version*, so a window that spans
a hot swap reports each version separately instead of crediting the old one's samples to the new.
Every interval each device sends one `metrics` event per version it served, through its own event
queue, like a real agent.

The fleet's inference rate is bounded globally, not per device: a token bucket asks for
`rate × devices` inferences a second, handed round-robin to the devices that hold a model, and at
most `workers` run at once (default: the CPU cores less one, which the event loop, the HTTP traffic
and the installs keep). A token that finds the workers' short queue full (two ticks of tokens, or two
jobs a worker) is dropped rather than queued: a longer queue would only turn CPU saturation into a
backlog, and the summary counts what was dropped so that "asked 1000/s, served 310/s" is plain to see.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import cores
from .device import Device
from .errors import NoModelError, ValidationFailedError
from .holder import MetricsWindow
from .runtime import ORT_ERRORS, LoadedModel, golden_inputs, softmax

log = logging.getLogger(__name__)
TICK = 0.02  # seconds between refills of the token bucket
QUEUED_PER_WORKER = 2  # jobs in flight per worker (one running, one waiting) before tokens are dropped …
QUEUED_TICKS = 2  # … or two ticks' worth of tokens, whichever is more: a refill must not drop its own tokens
# A model that fails at run time, or a golden image that no longer decodes: counted, never fatal.
_INFERENCE_ERRORS: tuple[type[Exception], ...] = (*ORT_ERRORS, ValidationFailedError)


def default_workers() -> int:
    """Inference threads for a fleet: every core but one (at least one)."""
    return max(1, cores() - 1)


class Telemetry:
    """Paces real inferences over a fleet's devices and turns them into `metrics` events."""

    def __init__(self, devices: Sequence[Device], *, rate: float, interval: float, workers: int | None = None) -> None:
        if rate <= 0 or interval <= 0:
            raise ValueError("the inference rate and the metrics interval must be positive")
        self.devices = devices
        self.rate = rate  # per device, per second
        self.interval = interval
        self.workers = workers or default_workers()
        self.started = time.monotonic()
        self.served = 0  # written by the worker threads under _lock
        self.dropped = 0
        self.errors = 0
        self.events = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sim-inference")
        self._inflight = 0
        self._max_inflight = max(self.workers * QUEUED_PER_WORKER, math.ceil(self.asked_per_s * TICK * QUEUED_TICKS))
        self._mark = (self.started, 0)  # (when, served): the progress line's recent rate
        self._recent = 0.0
        self._next = 0
        self._turn = [0] * len(devices)  # which golden input each device runs next
        self._windows: list[dict[int, MetricsWindow]] = [{} for _ in devices]
        self._totals: dict[int, MetricsWindow] = {}  # per version, the whole run: the summary's numbers
        self._inputs: OrderedDict[bytes, list[npt.NDArray[np.float32]]] = OrderedDict()

    @property
    def asked_per_s(self) -> float:
        return self.rate * len(self.devices)

    def served_per_s(self) -> float:
        return self.served / max(1e-9, time.monotonic() - self.started)

    # ------------------------------------------------------------------ on the worker threads

    def _golden(self, model: LoadedModel) -> list[npt.NDArray[np.float32]]:
        """Each version's golden inputs, made once for the whole fleet (a few versions are kept)."""
        key = model.verified.manifest_bytes
        with self._lock:
            hit = self._inputs.get(key)
            if hit is not None:
                self._inputs.move_to_end(key)
                return hit
        inputs = golden_inputs(model.manifest)
        with self._lock:
            self._inputs[key] = inputs
            while len(self._inputs) > 4:
                self._inputs.popitem(last=False)
        return inputs

    def _infer(self, i: int) -> None:
        """One inference on device `i`'s current model, recorded under the version that ran it."""
        try:
            with self.devices[i].holder.acquire() as model:
                inputs = self._golden(model)
                x = inputs[self._turn[i] % len(inputs)]
                self._turn[i] += 1
                start = time.thread_time()  # CPU time: see the module's docstring
                logits = model.run(x)
                latency_ms = (time.thread_time() - start) * 1000
                version = model.version
        except NoModelError:
            return  # swapped out between the token and its turn: nothing was served
        except _INFERENCE_ERRORS as e:
            with self._lock:
                self.errors += 1
            log.debug("simulated inference failed on device %d: %s", i, e)
            return
        confidence = float(np.max(softmax(logits)))
        with self._lock:
            window = self._windows[i].setdefault(version, MetricsWindow())
            total = self._totals.setdefault(version, MetricsWindow())
            self.served += 1
        window.record(latency_ms, confidence)
        total.record(latency_ms, confidence)

    # ------------------------------------------------------------------ on the event loop

    def _done(self, _future: asyncio.Future[None]) -> None:
        self._inflight -= 1

    def _submit(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Hand one token to the next device holding a model; False when no device holds one yet."""
        if self._inflight >= self._max_inflight:
            self.dropped += 1
            return True
        n = len(self.devices)
        for _ in range(n):  # the next device that holds a model
            i = self._next
            self._next = (i + 1) % n
            if self.devices[i].holder.model is not None:
                self._inflight += 1
                loop.run_in_executor(self._pool, self._infer, i).add_done_callback(self._done)
                return True
        return False

    async def pace(self) -> None:
        """The token bucket: `rate × devices` a second, never more than a short burst at once."""
        loop = asyncio.get_running_loop()
        budget, last = 0.0, time.monotonic()
        cap = max(1.0, self.asked_per_s * TICK * 5)  # a stalled loop must not release a flood
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            budget = min(cap, budget + self.asked_per_s * (now - last))
            last = now
            while budget >= 1.0:
                budget -= 1.0
                if not self._submit(loop):
                    budget = 0.0  # nothing installed yet: nothing to serve, nothing owed

    def emit(self, i: int) -> None:
        """Device `i` reports its windows: one `metrics` event per version it served since the last."""
        device = self.devices[i]
        current = device.holder.version
        with self._lock:
            windows = sorted(self._windows[i].items())
        for version, window in windows:
            summary = window.take()
            if summary is not None:
                device.emit("metrics", version, metrics=summary)
                self.events += 1
            elif version != current:
                with self._lock:
                    self._windows[i].pop(version, None)

    def emit_all(self) -> None:
        for i in range(len(self.devices)):
            self.emit(i)

    async def report(self) -> None:
        """Every `interval`, each device reports; devices are spread over the interval, as real ones are."""
        n = len(self.devices)
        due = [self.started + self.interval * (1 + i / n) for i in range(n)]
        while True:
            await asyncio.sleep(min(0.25, self.interval / 4))
            now = time.monotonic()
            for i in range(n):
                if now >= due[i]:
                    due[i] = max(due[i] + self.interval, now)
                    self.emit(i)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ the summary

    def line(self) -> str:
        """The progress line's part: inferences a second over the last second or so."""
        now, (then, before) = time.monotonic(), self._mark
        if now - then >= 1.0:
            self._recent = (self.served - before) / (now - then)
            self._mark = (now, self.served)
        return f"inferences {self._recent:.0f}/s"

    def summary(self) -> dict[str, Any]:
        with self._lock:
            totals = sorted(self._totals.items())
        return {
            "asked_per_s": round(self.asked_per_s, 2),
            "served": self.served,
            "served_per_s": round(self.served_per_s(), 2),
            "dropped": self.dropped,
            "errors": self.errors,
            "workers": self.workers,
            "metrics_events": self.events,
            "versions": {f"v{v}": s for v, w in totals if (s := w.take()) is not None},
        }
