"""Fixtures for the artifact tests: a tiny real ONNX classifier and a signed artifact factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import artifact as A
from tests.support import manifest_fields, tiny_classifier


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
