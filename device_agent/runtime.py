"""ONNX Runtime on the device: build a session, prove it on the golden set, answer predictions.

A model reaches the holder only as a :class:`LoadedModel`, and one is made only from ONNX bytes
that passed the door, together with their :class:`artifact.VerifiedManifest`. ONNX Runtime's own
exceptions are translated here into :class:`ValidationFailedError`: a signed model that this
device's runtime cannot load, or that answers its golden inputs wrongly, must never be swapped in.
"""

from __future__ import annotations

import base64
import binascii
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from onnxruntime.capi import onnxruntime_pybind11_state as _ortc  # type: ignore[import-untyped]
from PIL import Image

import artifact as A

from .errors import BadImageError, ValidationFailedError
from .images import decode_rgb

# Everything ONNX Runtime raises for a model it cannot load or run (they derive from Exception only).
ORT_ERRORS: tuple[type[Exception], ...] = (
    _ortc.Fail,
    _ortc.InvalidArgument,
    _ortc.InvalidGraph,
    _ortc.InvalidProtobuf,
    _ortc.NoSuchFile,
    _ortc.NotImplemented,
    _ortc.RuntimeException,
    RuntimeError,
    ValueError,
)
TOP_K = 5


@dataclass(frozen=True)
class GoldenReport:
    cases: int
    max_abs_error: float
    golden_ms: float  # wall time of the golden run
    latency_ms: float  # per input


@dataclass(frozen=True)
class LoadedModel:
    """A verified manifest and a live session built from the bytes it signs."""

    verified: A.VerifiedManifest
    session: Any  # onnxruntime.InferenceSession (untyped)
    input_name: str
    output_name: str

    @property
    def manifest(self) -> A.Manifest:
        return self.verified.manifest

    @property
    def version(self) -> int:
        return self.verified.manifest.version

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for a batch; thread-safe (ONNX Runtime sessions may be run concurrently)."""
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)


def session_options(threads: int) -> Any:
    """One intra-op thread pool per session, no spinning: a device shares its cores with the app."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def load_model(onnx_bytes: bytes, verified: A.VerifiedManifest, *, threads: int = 1) -> LoadedModel:
    """Build the session; refuse a model whose inputs/outputs are not the ones the manifest names."""
    m = verified.manifest
    try:
        session = ort.InferenceSession(onnx_bytes, session_options(threads), providers=["CPUExecutionProvider"])
    except ORT_ERRORS as e:
        raise ValidationFailedError(f"ONNX Runtime cannot load the model: {e}") from e
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if m.onnx.input.name not in inputs:
        raise ValidationFailedError(f"the model has no input {m.onnx.input.name!r} (it has {sorted(inputs)})")
    if m.onnx.output.name not in outputs:
        raise ValidationFailedError(f"the model has no output {m.onnx.output.name!r} (it has {sorted(outputs)})")
    return LoadedModel(verified, session, m.onnx.input.name, m.onnx.output.name)


def golden_input(case: A.GoldenCase, manifest: A.Manifest) -> npt.NDArray[np.float32]:
    """The input tensor of a golden case: regenerated from its seed, or its image preprocessed."""
    if case.seed is not None:
        return A.golden_seed_input(case, manifest)
    try:
        data = base64.b64decode(case.image or "", validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValidationFailedError(f"a golden image is not base64: {e}") from e
    try:
        rgb = decode_rgb(data, manifest.preprocess.size)
    except BadImageError as e:
        raise ValidationFailedError(f"a golden image cannot be decoded: {e}") from e
    return A.image_to_input(rgb, manifest.preprocess)


def golden_inputs(manifest: A.Manifest) -> list[npt.NDArray[np.float32]]:
    """Every golden case's input tensor. They depend on the signed manifest alone, so the agent
    makes them while the model is still downloading (:meth:`LocalRuntime.warm`)."""
    return [golden_input(c, manifest) for c in manifest.golden.cases]


def validate_golden(
    model: LoadedModel, inputs: list[npt.NDArray[np.float32]] | None = None, *, workers: int = 1
) -> GoldenReport:
    """Run every golden case; top-1 must match and every logit lie within the tolerance.

    Cases run at batch size 1, like the publisher's and /predict's (a batch is no faster on a small
    CPU: 8 × 224 px SqueezeNet took 59–70 ms batched, 37–50 ms one by one), spread over `workers`
    threads: ONNX Runtime releases the GIL, so the swap waits for the slowest core, not the sum.
    """
    m = model.manifest
    cases = m.golden.cases
    xs = inputs if inputs is not None else golden_inputs(m)
    start = time.perf_counter()
    try:
        if workers > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(xs)), thread_name_prefix="golden") as pool:
                logits = np.concatenate(list(pool.map(model.run, xs)), axis=0)
        else:
            logits = np.concatenate([model.run(x) for x in xs], axis=0)
    except ORT_ERRORS as e:
        raise ValidationFailedError(f"the model fails on its golden inputs: {e}") from e
    elapsed = (time.perf_counter() - start) * 1000
    if logits.shape != (len(cases), len(m.labels)):
        raise ValidationFailedError(f"the model answers shape {logits.shape}, expected {(len(cases), len(m.labels))}")
    worst = 0.0
    for i, (case, row) in enumerate(zip(cases, logits, strict=True)):
        if not np.all(np.isfinite(row)):
            raise ValidationFailedError(f"golden case {i}: the model answers non-finite logits")
        top1 = int(np.argmax(row))
        if top1 != case.top1:
            raise ValidationFailedError(f"golden case {i}: top-1 is {top1}, the publisher saw {case.top1}")
        error = float(np.max(np.abs(row - np.asarray(case.logits, dtype=np.float32))))
        if error > m.golden.tolerance:
            raise ValidationFailedError(
                f"golden case {i}: a logit is off by {error:.3g}, the tolerance is {m.golden.tolerance:g}"
            )
        worst = max(worst, error)
    return GoldenReport(len(cases), worst, elapsed, elapsed / len(cases))


def image_tensor(image: bytes | Image.Image, manifest: A.Manifest) -> npt.NDArray[np.float32]:
    """The /predict preprocessing: the same rule as the golden images."""
    return A.image_to_input(decode_rgb(image, manifest.preprocess.size), manifest.preprocess)


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    z = logits.astype(np.float64) - float(np.max(logits))
    e = np.exp(z)
    return np.asarray(e / e.sum(), dtype=np.float64)


def describe(logits: npt.NDArray[np.float32], model: LoadedModel, k: int = TOP_K) -> dict[str, Any]:
    """The /predict answer. The model emits logits (the golden set says so); scores are their softmax."""
    probs = softmax(logits.reshape(-1))
    order = np.argsort(-probs, kind="stable")[: min(k, probs.size)]
    labels = model.manifest.labels
    top = [{"label": labels[i], "index": int(i), "score": round(float(probs[i]), 6)} for i in order]
    return {
        "label": top[0]["label"],
        "score": top[0]["score"],
        "top_k": top,
        "model": model.manifest.model,
        "version": model.version,
    }
