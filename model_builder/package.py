"""Package a trained run as a signed artifact: manifest from the run, golden set from ONNX Runtime.

The golden set is what a device runs before it swaps a model in: a few real validation images (PNG,
stored at exactly the model's input size so no resampling differences creep in) and inputs the
device regenerates from a seed, each with the top-1 and logits that ONNX Runtime computed here on the
exported model. The images go first, as many as fit the manifest budget; seeds fill up to `cases`.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
from PIL import Image

import artifact as A
from model_builder.errors import PackageError

GOLDEN_IMAGE_BUDGET = 40 * 1024  # bytes of base64 PNG in the manifest; the rest of the 64 KiB is headroom


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _png(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def golden_set(
    onnx_bytes: bytes,
    preprocess: A.Preprocess,
    images: Sequence[np.ndarray],
    *,
    cases: int = 12,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Golden cases with ONNX Runtime's answers: images first (within budget), then seeds."""
    if not 8 <= cases <= 16:
        raise PackageError("a golden set has 8 to 16 cases")
    session = _session(onnx_bytes)
    input_name = session.get_inputs()[0].name
    out: list[dict[str, Any]] = []
    budget = GOLDEN_IMAGE_BUDGET
    for rgb in images:
        if len(out) >= cases - 2:  # keep room for at least two seeded cases
            break
        if rgb.shape[:2] != (preprocess.size, preprocess.size):
            continue
        encoded = _png(np.ascontiguousarray(rgb, dtype=np.uint8))
        if len(encoded) > budget:
            continue
        budget -= len(encoded)
        (logits,) = session.run(None, {input_name: A.image_to_input(rgb, preprocess)})
        out.append({"image": encoded, "top1": int(logits[0].argmax()), "logits": [float(v) for v in logits[0]]})
    s = seed
    while len(out) < cases:
        x = A.seeded_input(s, A.input_shape(preprocess))
        (logits,) = session.run(None, {input_name: x})
        out.append({"seed": s, "top1": int(logits[0].argmax()), "logits": [float(v) for v in logits[0]]})
        s += 1
    return {"tolerance": tolerance, "cases": out}


def onnx_info(onnx_bytes: bytes) -> dict[str, Any]:
    """The manifest's `onnx` block read from the model itself."""
    io = A.read_graph_io(onnx.load_model_from_string(onnx_bytes))
    if len(io.inputs) != 1 or len(io.outputs) != 1:
        raise PackageError("the model must have exactly one input and one output")
    (graph_input,), (graph_output,) = io.inputs, io.outputs

    def dims(value: A.TensorIO) -> list[int | str]:
        return [0 if d is None else d for d in value.shape]  # an unset dimension is written as 0

    return {
        "length": len(onnx_bytes),
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "opset": io.opset or 0,
        "input": {"name": graph_input.name, "shape": dims(graph_input), "dtype": graph_input.dtype},
        "output": {"name": graph_output.name, "shape": dims(graph_output)},
    }


def build_artifact(
    onnx_bytes: bytes,
    *,
    name: str,
    version: int,
    labels: list[str],
    preprocess: dict[str, Any],
    metrics: dict[str, float | int],
    sample_images: Sequence[np.ndarray],
    keys: Sequence[A.SigningKey],
    parent_version: int | None = None,
    expires_in: timedelta | None = None,
    golden_cases: int = 12,
    golden_tolerance: float = 1e-3,
    now: datetime | None = None,
) -> tuple[bytes, A.Manifest]:
    """A signed artifact for an exported model. Raises :class:`artifact.ManifestError` on bad fields."""
    moment = now or datetime.now(UTC)
    pre = A.Preprocess(**preprocess)
    payload = A.encode_payload(onnx_bytes)
    manifest = A.build_manifest(
        schema=1,
        model=name,
        version=version,
        created_at=A.format_time(moment),
        parent_version=parent_version,
        payload={
            "encoding": A.ENCODING_ONNX_ZSTD,
            "length": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
        onnx=onnx_info(onnx_bytes),
        labels=labels,
        preprocess=pre.model_dump(),
        metrics=metrics,
        golden=golden_set(onnx_bytes, pre, sample_images, cases=golden_cases, tolerance=golden_tolerance),
        expires_at=A.format_time(moment + expires_in) if expires_in else None,
    )
    return A.seal_artifact(manifest, payload, keys), manifest
