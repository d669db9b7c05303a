"""Where serving models come from: one per device (`LocalRuntime`), or shared by a simulated fleet.

The update machine hands a runtime verified ONNX bytes and gets back a validated
:class:`~device_agent.runtime.LoadedModel`; how sessions are built and whether they are shared is
the runtime's business, so a real agent and a thousand simulated ones run the same state machine.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

import artifact as A

from .runtime import GoldenReport, LoadedModel, golden_inputs, load_model, validate_golden


@dataclass(frozen=True)
class Timings:
    session_ms: float
    golden: GoldenReport


class Runtime(Protocol):
    def warm(self, verified: A.VerifiedManifest) -> None:
        """Work that needs only the manifest, done while the model downloads."""

    def load(self, onnx_bytes: bytes, verified: A.VerifiedManifest) -> LoadedModel:
        """A session for a model already validated once (boot)."""

    def prepare(self, onnx_bytes: bytes, verified: A.VerifiedManifest) -> tuple[LoadedModel, Timings]:
        """A session proven on the golden set: the only way a new model reaches the holder."""


class LocalRuntime:
    """A real device: its own session per model, validated on the golden set before it may serve."""

    def __init__(self, threads: int = 1, workers: int | None = None) -> None:
        self.threads = threads
        self.workers = workers or os.cpu_count() or 1
        self._inputs: tuple[bytes, list[npt.NDArray[np.float32]]] | None = None

    def warm(self, verified: A.VerifiedManifest) -> None:
        if self._inputs is None or self._inputs[0] != verified.manifest_bytes:
            self._inputs = (verified.manifest_bytes, golden_inputs(verified.manifest))

    def load(self, onnx_bytes: bytes, verified: A.VerifiedManifest) -> LoadedModel:
        return load_model(onnx_bytes, verified, threads=self.threads)

    def prepare(self, onnx_bytes: bytes, verified: A.VerifiedManifest) -> tuple[LoadedModel, Timings]:
        start = time.perf_counter()
        model = self.load(onnx_bytes, verified)
        session_ms = (time.perf_counter() - start) * 1000
        cached = self._inputs
        inputs = cached[1] if cached is not None and cached[0] == verified.manifest_bytes else None
        return model, Timings(session_ms, validate_golden(model, inputs, workers=self.workers))


_NOTHING = Timings(0.0, GoldenReport(0, 0.0, 0.0, 0.0))


class SharedRuntime:
    """The simulator's: simulated devices on the same model share one session and its golden verdict.

    Keyed by the sha256 of the ONNX bytes *and* of the manifest, so a device only reuses what was
    built from exactly the bytes it verified itself. A failed validation is not cached (it raises),
    so every device meets the refusal itself.
    """

    def __init__(self, threads: int = 1, capacity: int = 4) -> None:
        self._local = LocalRuntime(threads, workers=1)
        self._capacity = capacity
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], threading.Lock] = {}
        self._cache: OrderedDict[tuple[str, str], tuple[LoadedModel, Timings | None]] = OrderedDict()

    def warm(self, verified: A.VerifiedManifest) -> None:
        pass  # a thousand devices would each regenerate the same inputs; the first prepare does it once

    def _get(self, onnx_bytes: bytes, verified: A.VerifiedManifest, golden: bool) -> tuple[LoadedModel, Timings]:
        key = (hashlib.sha256(onnx_bytes).hexdigest(), hashlib.sha256(verified.manifest_bytes).hexdigest())
        with self._lock:
            key_lock = self._keys.setdefault(key, threading.Lock())
        with key_lock:  # one build per model, however many devices ask at once
            hit = self._cache.get(key)
            if hit is not None and (hit[1] is not None or not golden):
                with self._lock:
                    self._cache.move_to_end(key)
                return hit[0], hit[1] or _NOTHING
            if golden:
                model, timings = self._local.prepare(onnx_bytes, verified)
            else:
                model, timings = self._local.load(onnx_bytes, verified), None
            with self._lock:
                self._cache[key] = (model, timings)
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
            return model, timings or _NOTHING

    def load(self, onnx_bytes: bytes, verified: A.VerifiedManifest) -> LoadedModel:
        return self._get(onnx_bytes, verified, golden=False)[0]

    def prepare(self, onnx_bytes: bytes, verified: A.VerifiedManifest) -> tuple[LoadedModel, Timings]:
        return self._get(onnx_bytes, verified, golden=True)
