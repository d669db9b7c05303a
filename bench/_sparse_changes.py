"""Sparse model changes for the delta benchmark, and the delta code of another git revision.

Two kinds of small correction, each at a chosen fraction of values changed:

- **int8**: a short fine-tune after quantization with the scales kept. The fine-tune's float move
  Δ = w_b − w_1 is scaled by α and each int8 weight re-rounded at its old scale:
  q' = q + round((w_1 + αΔ)/s) − round(w_1/s). α is found by bisection so that the requested
  fraction of int8 weight codes changes; biases, scales and zero points stay as they are. The
  changed positions are where a weight crossed a rounding boundary: nothing in the old model
  predicts them, so their entropy is a floor for every lossless coder.
- **fp32**: a sparse fine-tune: in every float tensor, only the given fraction of values with the
  largest |Δ| take their fine-tuned value (as sparse-update fine-tuning does).
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent


def _arrays(model: bytes) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load_model_from_string(model).graph.initializer}


def _replace(model: bytes, values: dict[str, np.ndarray]) -> bytes:
    proto = onnx.load_model_from_string(model)
    for t in proto.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return proto.SerializeToString()


def canonical(model: bytes) -> bytes:
    """The model as `onnx` serialises it, so that old and new differ only in the changed values."""
    return onnx.load_model_from_string(model).SerializeToString()


def sparse_fp32(old: bytes, tuned: bytes, fraction: float) -> tuple[bytes, int, int]:
    """`old` with the `fraction` of each float tensor's values that moved most set to `tuned`'s;
    (model, values changed, float values in all)."""
    a, b = _arrays(old), _arrays(tuned)
    out, changed, total = {}, 0, 0
    for name, w in a.items():
        if w.dtype != np.float32 or name not in b or w.size == 0:
            continue
        flat, move = w.reshape(-1).copy(), (b[name] - w).reshape(-1)
        top = np.argsort(-np.abs(move), kind="stable")[: math.ceil(fraction * w.size)]
        flat[top] = b[name].reshape(-1)[top]
        changed += int((flat != w.reshape(-1)).sum())
        total += w.size
        out[name] = flat.reshape(w.shape)
    return _replace(old, out), changed, total


def sparse_int8(q_old: bytes, f_old: bytes, f_tuned: bytes, fraction: float) -> tuple[bytes, int, int]:
    """`q_old` (QDQ int8) after a fine-tune re-rounded at the old scales; (model, changed, total codes)."""
    q, w1, wb = _arrays(q_old), _arrays(f_old), _arrays(f_tuned)
    layers = []
    for name, codes in q.items():
        base = name.removesuffix("_quantized")
        if codes.dtype != np.int8 or base == name or base not in w1 or base + "_scale" not in q:
            continue
        shape = (-1,) + (1,) * (codes.ndim - 1)
        scale = q[base + "_scale"].astype(np.float64).reshape(shape)
        layers.append((name, codes, w1[base] / scale, (wb[base] - w1[base]) / scale))
    total = sum(c.size for _, c, _, _ in layers)

    def steps(alpha: float) -> list[np.ndarray]:
        return [np.rint(w + alpha * d) - np.rint(w) for _, _, w, d in layers]

    def changed(alpha: float) -> int:
        return sum(
            int((np.clip(c + s, -128, 127) != c).sum()) for (_, c, _, _), s in zip(layers, steps(alpha), strict=True)
        )

    lo, hi = 0.0, 1.0
    while changed(hi) < fraction * total and hi < 1e6:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if changed(mid) < fraction * total else (lo, mid)
    new = {
        name: np.clip(c.astype(np.int64) + s, -128, 127).astype(np.int8)
        for (name, c, _, _), s in zip(layers, steps(hi), strict=True)
    }
    return _replace(q_old, new), changed(hi), total


def baseline_artifact(rev: str) -> Any:
    """The `artifact` package as it is at git revision `rev`, importable next to the current one."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "artifact"], capture_output=True, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp, filter="data")
    name = "_baseline_artifact"
    spec = importlib.util.spec_from_file_location(
        name, tmp / "artifact" / "__init__.py", submodule_search_locations=[str(tmp / "artifact")]
    )
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def entropy_floor(old: bytes, new: bytes) -> float:
    """Bytes an ideal coder needs for the changed int8 values, knowing only the old model.

    Per int8 tensor the binary entropy of which codes changed (positions), plus the order-0 entropy
    of the steps over all changes: a floor for changes whose places the old model cannot predict.
    """
    a, b = _arrays(old), _arrays(new)
    bits, steps = 0.0, []
    for name, w in a.items():
        if w.dtype != np.int8 or name not in b or w.size == 0:
            continue
        moved = b[name].astype(np.int16) - w
        k, n = int(np.count_nonzero(moved)), w.size
        if 0 < k < n:
            p = k / n
            bits += n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        steps.append(moved[moved != 0])
    values = np.concatenate(steps) if steps else np.zeros(0, np.int16)
    if values.size:
        _, counts = np.unique(values, return_counts=True)
        probs = counts / values.size
        bits += float(-(probs * np.log2(probs)).sum()) * values.size
    return bits / 8
