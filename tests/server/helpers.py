"""Building blocks for the server tests: real signed artifacts of small, runnable ONNX models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import artifact as A
from tests.artifact.conftest import manifest_fields as artifact_manifest_fields

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def private_pg_schema(prefix: str) -> Iterator[str]:
    """A fresh schema in the `test` database, dropped afterwards; yields a URL whose search_path is it.

    Private schemas let the test suite, the migration tests and the poll benchmark share one
    PostgreSQL without seeing each other's tables.
    """
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


MODEL = "shapes"


def classifier(seed: int = 0, *, version_tweak: int = 0, hidden: int = 192) -> bytes:
    """A runnable 3-class linear classifier on 1×3×8×8 inputs.

    Models with the same `seed` share their weight matrix and differ (by `version_tweak`) only in
    the bias — a fine-tune of the classifier head, for which a delta is tiny. A different `seed`
    gives an unrelated model, for which no delta is worth sending. `hidden` > 192 adds an unused
    extra initializer to make the model bigger (slower deltas, bigger payloads).
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((192, 3)).astype(np.float32)
    b = (rng.standard_normal(3) + 0.01 * version_tweak).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    if hidden > 192:
        extra = rng.standard_normal((hidden, 64)).astype(np.float32)
        extra[0, : min(64, version_tweak)] += 1.0
        inits.append(numpy_helper.from_array(extra, "extra"))
        nodes.append(helper.make_node("Identity", ["extra"], ["extra_out"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def manifest_fields(onnx_bytes: bytes, payload: bytes, **overrides: Any) -> dict[str, Any]:
    """The artifact tests' manifest for the 8×8 classifier, as this server's first version of MODEL."""
    base = {"model": MODEL, "version": 1, "parent_version": None, "metrics": {"accuracy": 0.9731, "params": 579}}
    return artifact_manifest_fields(onnx_bytes, payload, **{**base, **overrides})


def build_artifact(
    key: A.SigningKey | list[A.SigningKey],
    *,
    version: int,
    onnx_bytes: bytes | None = None,
    model: str = MODEL,
    **overrides: Any,
) -> bytes:
    """A sealed artifact; by default version N is the bias-tweaked fine-tune N of seed 0."""
    onnx_bytes = onnx_bytes if onnx_bytes is not None else classifier(0, version_tweak=version)
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
