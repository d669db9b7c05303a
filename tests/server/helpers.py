"""Building blocks for the server tests: real signed artifacts of small, runnable ONNX models."""

from __future__ import annotations

from typing import Any

import artifact as A
from tests.support import MODEL, tiny_classifier
from tests.support import manifest_fields as support_manifest_fields


def manifest_fields(onnx_bytes: bytes, payload: bytes, **overrides: Any) -> dict[str, Any]:
    """The shared manifest fields for the 8×8 classifier, as this server's first version of MODEL."""
    base = {"model": MODEL, "version": 1, "parent_version": None, "metrics": {"accuracy": 0.9731, "params": 579}}
    return support_manifest_fields(onnx_bytes, payload, **{**base, **overrides})


def build_artifact(
    key: A.SigningKey | list[A.SigningKey],
    *,
    version: int,
    onnx_bytes: bytes | None = None,
    model: str = MODEL,
    **overrides: Any,
) -> bytes:
    """A sealed artifact; by default version N is the bias-tweaked fine-tune N of seed 0."""
    onnx_bytes = onnx_bytes if onnx_bytes is not None else tiny_classifier(0, version_tweak=version)
    payload = A.encode_payload(onnx_bytes)
    fields = manifest_fields(onnx_bytes, payload, version=version, model=model, **overrides)
    if version > 1 and "parent_version" not in overrides:
        fields["parent_version"] = version - 1
    manifest = A.build_manifest(**fields)
    return A.seal_artifact(manifest, payload, key if isinstance(key, list) else [key])


def onnx_of(artifact_file: bytes) -> bytes:
    parts = A.read_artifact(artifact_file)
    m = A.parse_manifest(parts.manifest_bytes)
    return A.decode_payload(parts.payload, encoding=m.payload.encoding, max_length=m.onnx.length)


def reseal(
    artifact_file: bytes,
    *,
    manifest: bytes | None = None,
    payload: bytes | None = None,
    signatures: tuple[A.Signature, ...] | None = None,
) -> bytes:
    """Rebuild an artifact file with one part swapped (for tampering tests)."""
    parts = A.read_artifact(artifact_file)
    return A.artifact_bytes(
        manifest if manifest is not None else parts.manifest_bytes,
        signatures if signatures is not None else parts.signatures,
        payload if payload is not None else parts.payload,
    )
