"""The one holder every inference goes through, and the hot swap.

`acquire` hands out the current model and counts it as in flight; `swap` replaces the reference
under a lock in O(1), so a request that started on the old model finishes on it while every new
request gets the new one. The old model is let go (its session freed once nothing else holds it)
when its last in-flight request returns; `drained` lets a caller wait for that moment.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import InferenceError, NoModelError
from .runtime import ORT_ERRORS, LoadedModel, describe, image_tensor

MAX_SAMPLES = 10_000


@dataclass
class _Entry:
    model: LoadedModel | None
    version: int
    inflight: int = 0
    retired: bool = False
    drained: threading.Event = field(default_factory=threading.Event)


class MetricsWindow:
    """Latency and top-1 confidence of the requests served since the last `take`.

    Samples beyond MAX_SAMPLES are kept by reservoir sampling, so a busy device's memory stays
    bounded while its percentiles stay unbiased.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: list[float] = []
        self._confidence_sum = 0.0
        self._count = 0
        self._rng = random.Random()
        self.total = 0

    def record(self, latency_ms: float, confidence: float) -> None:
        with self._lock:
            self._count += 1
            self.total += 1
            self._confidence_sum += confidence
            if len(self._latency) < MAX_SAMPLES:
                self._latency.append(latency_ms)
            else:
                j = self._rng.randrange(self._count)
                if j < MAX_SAMPLES:
                    self._latency[j] = latency_ms

    def take(self) -> dict[str, Any] | None:
        """The window's summary (the `metrics` event's fields), or None when nothing was served."""
        with self._lock:
            if not self._count:
                return None
            lat = np.asarray(self._latency)
            summary = {
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p95_ms": round(float(np.percentile(lat, 95)), 3),
                "mean_confidence": round(self._confidence_sum / self._count, 6),
                "requests": self._count,
            }
            self._latency, self._confidence_sum, self._count = [], 0.0, 0
            return summary


class ModelHolder:
    """The live model reference. Thread-safe; `predict` may be called from any thread."""

    def __init__(self, on_release: Callable[[int], None] | None = None, concurrency: int | None = None) -> None:
        self._lock = threading.Lock()
        # As many inferences at once as there are cores: more would only time-slice them, stretch
        # every request and starve the validation of the next model (requests queue here instead).
        self._slots = threading.BoundedSemaphore(concurrency) if concurrency else None
        self._current: _Entry | None = None
        self._on_release = on_release
        self.metrics = MetricsWindow()

    @property
    def model(self) -> LoadedModel | None:
        entry = self._current
        return None if entry is None else entry.model

    @property
    def version(self) -> int | None:
        entry = self._current
        return None if entry is None else entry.version

    @contextmanager
    def acquire(self) -> Iterator[LoadedModel]:
        """The current model, pinned until the block ends even if a swap happens meanwhile."""
        with self._lock:
            entry = self._current
            if entry is None or entry.model is None:
                raise NoModelError("no model is installed yet; the agent is waiting for its first update")
            entry.inflight += 1
            model = entry.model
        try:
            yield model
        finally:
            with self._lock:
                entry.inflight -= 1
                release = entry.retired and entry.inflight == 0
                if release:
                    entry.model = None
            if release:
                self._released(entry)

    def swap(self, model: LoadedModel) -> threading.Event | None:
        """Serve `model` from now on. Returns an event set when the previous model has drained."""
        old = self._replace(_Entry(model, model.version))
        return None if old is None else old.drained

    def clear(self) -> None:
        """Serve nothing from now on (the model's signer was revoked); requests in flight finish."""
        self._replace(None)

    def _replace(self, new: _Entry | None) -> _Entry | None:
        """Make `new` current and retire the entry it replaces (released now if no request holds it)."""
        with self._lock:
            old, self._current = self._current, new
            if old is None:
                return None
            old.retired = True
            release = old.inflight == 0
            if release:
                old.model = None
        if release:
            self._released(old)
        return old

    def _released(self, entry: _Entry) -> None:
        entry.drained.set()
        if self._on_release is not None:
            self._on_release(entry.version)

    def predict(self, image: bytes | Image.Image) -> dict[str, Any]:
        """Classify one image with whichever model is current when its turn comes."""
        with self._slots or contextlib.nullcontext(), self.acquire() as model:
            x = image_tensor(image, model.manifest)
            start = time.perf_counter()
            try:
                logits = model.run(x)
            except ORT_ERRORS as e:
                raise InferenceError(f"inference failed: {e}") from e
            latency = (time.perf_counter() - start) * 1000
            answer = describe(logits, model)
        self.metrics.record(latency, float(answer["score"]))
        return answer
