"""Tiny real ONNX classifiers and signed releases of them, with golden sets computed by ONNX Runtime."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import artifact as A

LABELS = ["circle", "square", "triangle"]
MODEL = "shapes"


def tiny_classifier(seed: int = 0, size: int = 8) -> bytes:
    """A runnable 3-class linear classifier on 1×3×size×size inputs (size 64 makes a ~150 KB payload)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((3 * size * size, 3)) / size).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def png_bytes(size: int = 8, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@dataclass(frozen=True)
class Release:
    version: int
    onnx: bytes
    payload: bytes
    manifest_bytes: bytes
    signatures: list[dict[str, str]]

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(json.loads(self.manifest_bytes))

    @property
    def payload_sha(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


PREPROCESS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


def golden_cases(onnx_bytes: bytes, size: int, image_case: bool) -> list[dict[str, Any]]:
    """What a publisher computes: the model's own answers on 8 seeded inputs (and one image)."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    pre = A.Preprocess(size=size, **PREPROCESS)
    cases: list[dict[str, Any]] = []
    for seed in range(8 - int(image_case)):
        x = A.seeded_input(seed, (1, 3, size, size))
        cases.append({"seed": seed, "x": x})
    if image_case:
        data = png_bytes(size, seed=99)
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
        cases.append({"image": base64.b64encode(data).decode(), "x": A.image_to_input(rgb, pre)})
    for case in cases:
        (logits,) = session.run(None, {"input": case.pop("x")})
        case["logits"] = [float(v) for v in logits[0]]
        case["top1"] = int(np.argmax(logits[0]))
    return cases


def make_release(
    version: int,
    keys: list[A.SigningKey],
    *,
    seed: int | None = None,
    size: int = 8,
    image_case: bool = True,
    onnx_bytes: bytes | None = None,
    **overrides: Any,
) -> Release:
    """A signed release of `tiny_classifier(seed or version)`; keyword overrides replace manifest fields."""
    model = onnx_bytes if onnx_bytes is not None else tiny_classifier(version if seed is None else seed, size)
    payload = A.encode_payload(model)
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "schema": 1,
        "model": MODEL,
        "version": version,
        "created_at": A.format_time(now),
        "parent_version": version - 1 if version > 1 else None,
        "payload": {"encoding": "onnx+zstd", "length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
        "onnx": {
            "length": len(model),
            "sha256": hashlib.sha256(model).hexdigest(),
            "opset": 17,
            "input": {"name": "input", "shape": ["batch", 3, size, size], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", 3]},
        },
        "labels": LABELS,
        "preprocess": {"size": size, **PREPROCESS},
        "metrics": {"accuracy": 0.9},
        "golden": overrides.pop("golden", None) or {"tolerance": 1e-4, "cases": golden_cases(model, size, image_case)},
        "expires_at": A.format_time(now + timedelta(days=30)),
    }
    fields.update(overrides)
    manifest = A.build_manifest(**fields)
    data, sigs = A.sign_manifest(manifest, keys)
    return Release(version, model, payload, data, [s.to_dict() for s in sigs])


def verified(release: Release, key: A.SigningKey) -> A.VerifiedManifest:
    return A.verify_manifest(
        release.manifest_bytes, release.signatures, trust=A.TrustPolicy.of([key.verify_key]), expected_model=MODEL
    )
