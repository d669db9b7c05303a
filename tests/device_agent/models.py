"""Signed releases of the shared tiny classifier (tests/support.py), with golden sets computed by ONNX Runtime."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

import artifact as A
from tests.support import MODEL, PREPROCESS, manifest_fields, tiny_classifier

__all__ = ["MODEL", "Release", "golden_cases", "make_release", "png_bytes", "tiny_classifier", "verified"]


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
    golden = overrides.pop("golden", None) or {"tolerance": 1e-4, "cases": golden_cases(model, size, image_case)}
    base = {"version": version, "parent_version": version - 1 if version > 1 else None, "metrics": {"accuracy": 0.9}}
    fields = manifest_fields(model, payload, size=size, **{**base, "golden": golden, **overrides})
    manifest = A.build_manifest(**fields)
    data, sigs = A.sign_manifest(manifest, keys)
    return Release(version, model, payload, data, [s.to_dict() for s in sigs])


def verified(release: Release, key: A.SigningKey) -> A.VerifiedManifest:
    return A.verify_manifest(
        release.manifest_bytes, release.signatures, trust=A.TrustPolicy.of([key.verify_key]), expected_model=MODEL
    )
