"""Fixtures for the artifact tests: a tiny real ONNX classifier, keys, and a signed artifact factory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import artifact as A

LABELS = ["circle", "square", "triangle"]


def tiny_classifier(seed: int = 0) -> bytes:
    """A real, runnable 3-class linear classifier on 1×3×8×8 inputs."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((192, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest_fields(onnx_bytes: bytes, payload_bytes: bytes, /, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "schema": 1,
        "model": "shapes",
        "version": 3,
        "created_at": A.format_time(now),
        "parent_version": 2,
        "payload": {
            "encoding": "onnx+zstd",
            "length": len(payload_bytes),
            "sha256": hashlib.sha256(payload_bytes).hexdigest(),
        },
        "onnx": {
            "length": len(onnx_bytes),
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "opset": 17,
            "input": {"name": "input", "shape": ["batch", 3, 8, 8], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", 3]},
        },
        "labels": LABELS,
        "preprocess": {"size": 8, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"},
        "metrics": {"accuracy": 0.9731, "params": 579, "density": 1.0, "bits": 32},
        "golden": {
            "tolerance": 1e-4,
            "cases": [{"seed": i, "top1": i % 3, "logits": [0.1 * i, -1.5, 2.25]} for i in range(8)],
        },
        "expires_at": A.format_time(now + timedelta(days=30)),
    }
    fields.update(overrides)
    return fields


@pytest.fixture(scope="session")
def signing_key() -> A.SigningKey:
    return A.generate_key()


@pytest.fixture(scope="session")
def other_key() -> A.SigningKey:
    return A.generate_key()


@pytest.fixture(scope="session")
def onnx_model() -> bytes:
    return tiny_classifier()


@pytest.fixture()
def make_artifact(signing_key: A.SigningKey, onnx_model: bytes) -> Callable[..., bytes]:
    """Build a signed artifact; keyword overrides replace manifest fields, `keys=` the signers."""

    def build(keys: list[A.SigningKey] | None = None, onnx_bytes: bytes | None = None, **overrides: Any) -> bytes:
        model = onnx_bytes if onnx_bytes is not None else onnx_model
        payload = A.encode_payload(model)
        manifest = A.build_manifest(**manifest_fields(model, payload, **overrides))
        return A.seal_artifact(manifest, payload, keys if keys is not None else [signing_key])

    return build


@pytest.fixture()
def trust(signing_key: A.SigningKey) -> A.TrustPolicy:
    return A.TrustPolicy.of([signing_key.verify_key])
