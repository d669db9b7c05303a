"""What every test package builds on: a tiny real ONNX classifier, its manifest fields, waiting, and
a real `python -m server serve` process.

The fixtures that go with these (`signing_key`, `other_key`) are in ``tests/conftest.py``; each
package's conftest adds what only it needs (the server's backends, the agent's fake server).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import artifact as A

MODEL = "shapes"
LABELS = ["circle", "square", "triangle"]
PREPROCESS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


def tiny_classifier(seed: int = 0, size: int = 8, *, version_tweak: int = 0, extra_rows: int = 0) -> bytes:
    """A runnable 3-class linear classifier on 1×3×size×size inputs (size 64 makes a ~150 KB payload).

    Models with the same `seed` share their weight matrix and differ (by `version_tweak`) only in
    the bias — a fine-tune of the classifier head, for which a delta is tiny. A different `seed`
    gives an unrelated model, for which no delta is worth sending. `extra_rows` adds an unused
    (extra_rows × 64) initializer to make the model bigger (slower deltas, bigger payloads).
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((3 * size * size, 3)) / size).astype(np.float32)
    b = (rng.standard_normal(3) + 0.01 * version_tweak).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    if extra_rows:
        extra = rng.standard_normal((extra_rows, 64)).astype(np.float32)
        extra[0, : min(64, version_tweak)] += 1.0
        inits.append(numpy_helper.from_array(extra, "extra"))
        nodes.append(helper.make_node("Identity", ["extra"], ["extra_out"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what the installed ONNX Runtime reads
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def manifest_fields(onnx_bytes: bytes, payload_bytes: bytes, /, *, size: int = 8, **overrides: Any) -> dict[str, Any]:
    """Valid manifest fields for a `tiny_classifier` of this `size` (version 3 of MODEL, a made-up
    golden set); keyword overrides replace whole fields."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "schema": 1,
        "model": MODEL,
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
            "input": {"name": "input", "shape": ["batch", 3, size, size], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", 3]},
        },
        "labels": LABELS,
        "preprocess": {"size": size, **PREPROCESS},
        "metrics": {"accuracy": 0.9731, "params": 579, "density": 1.0, "bits": 32},
        "golden": {
            "tolerance": 1e-4,
            "cases": [{"seed": i, "top1": i % 3, "logits": [0.1 * i, -1.5, 2.25]} for i in range(8)],
        },
        "expires_at": A.format_time(now + timedelta(days=30)),
    }
    fields.update(overrides)
    return fields


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (and return that); fail the test otherwise.

    The predicate is asked once more after the deadline, so a slow machine never fails a test whose
    condition came true while the waiter slept.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(env: Mapping[str, str], *, cwd: Path, log: Path, args: Sequence[str] = ()) -> Iterator[str]:
    """A real `python -m server serve [args]` on a free loopback port; yields its base URL once ready.

    Ready means `/readyz` answered 200 (the migrations ran); a server that exits before, or is not
    ready within 60 s, fails the test with its log. Its stdout and stderr go to `log`, complete once
    the block is left: the server is stopped (SIGTERM) and waited for. It runs in its own session so
    that a `--workers` supervisor and its workers stop together.
    """
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", str(port), *args],
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"server did not become ready: {log.read_text()}"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def trust_root(
    version: int,
    keys: list[A.SigningKey],
    signers: list[A.SigningKey],
    *,
    threshold: int = 1,
    expires: datetime | None = None,
) -> bytes:
    """A root document of the root of trust (artifact.trust), valid for a year unless `expires` says otherwise."""
    return A.sign_root(
        version=version,
        expires=expires or datetime.now(UTC) + timedelta(days=365),
        keys=[k.verify_key for k in keys],
        threshold=threshold,
        signers=signers,
    )


def trust_keys(
    version: int,
    publishers: list[A.SigningKey],
    signers: list[A.SigningKey],
    *,
    revoked: Sequence[A.SigningKey] = (),
    threshold: int = 1,
    expires: datetime | None = None,
) -> bytes:
    """A keys document naming `publishers` (and revoking `revoked`), signed by root keys `signers`."""
    return A.sign_keys(
        version=version,
        expires=expires or datetime.now(UTC) + timedelta(days=365),
        keys=[k.verify_key for k in publishers],
        threshold=threshold,
        revoked=[k.keyid for k in revoked],
        signers=signers,
    )
