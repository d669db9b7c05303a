"""Server memory on upload: peak RSS of a real `ota-server serve` process for hostile uploads.

Two uploads, each to a fresh server (SQLite, local blobs) that trusts one publisher key:

* ``junk-signature``: a well-formed artifact file of 250 MiB whose signature is junk — refused
  with 422, ideally without the payload ever being read;
* ``signed-bomb``: a *validly signed* artifact whose payload inflates to 1 GiB of zeros with an
  honest ``onnx.length`` — refused by ``OTA_MAX_MODEL_BYTES`` before decoding.

Peak RSS is the server's ``VmHWM`` after the answer minus its ``VmRSS`` before the upload. Run
``python -m bench.upload_memory``; it prints one line per case (the numbers go to docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import artifact as A
from model_builder import build_artifact

MODEL = "upload-bench"

MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _signed_fields(key: A.SigningKey) -> dict[str, object]:
    """The manifest fields of a real, signed release of a tiny 3-class model (built with public APIs)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((192, 3)) / 8).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(8)]
    _, manifest = build_artifact(
        model.SerializeToString(),
        name=MODEL,
        version=1,
        labels=["a", "b", "c"],
        preprocess={"size": 8, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "NCHW"},
        metrics={},
        sample_images=images,
        keys=[key],
        golden_cases=8,
    )
    fields: dict[str, object] = manifest.model_dump(mode="json")
    return fields


def junk_signature_artifact(path: Path, key: A.SigningKey, size: int) -> None:
    manifest = A.build_manifest(**_signed_fields(key))
    data, sigs = A.sign_manifest(manifest, [key])
    junk = A.Signature(keyid=sigs[0].keyid, sig="A" * 86 + "==")
    with path.open("wb") as f:
        A.write_artifact(f, data, [junk], os.urandom(1024))
    # Same layout, with a payload of `size` bytes: rewrite the length prefix and append zeros.
    raw = path.read_bytes()
    head = raw[: len(raw) - 1024 - 8]
    with path.open("wb") as f:
        f.write(head + size.to_bytes(8, "big"))
        f.truncate(len(head) + 8 + size)


def signed_bomb_artifact(path: Path, key: A.SigningKey, inflated: int) -> None:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3, write_content_size=False)
    chunks = cctx.compressobj()
    zero = bytes(MiB)
    payload = b"".join(chunks.compress(zero) for _ in range(inflated // MiB)) + chunks.flush()
    fields = _signed_fields(key)
    fields["payload"] = {
        "encoding": A.ENCODING_ONNX_ZSTD,
        "length": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    fields["onnx"] = {**fields["onnx"], "length": inflated}  # type: ignore[dict-item]
    manifest = A.build_manifest(**fields)
    data, sigs = A.sign_manifest(manifest, [key])
    with path.open("wb") as f:
        A.write_artifact(f, data, sigs, payload)


def measure(case: str, artifact_path: Path, key_path: Path, work: Path) -> str:
    port = _free_port()
    env = {
        **os.environ,
        "OTA_DATABASE_URL": f"sqlite:///{work / case}.db",
        "OTA_STORAGE_URL": f"file://{work / case}-blobs",
        "OTA_PUBLISHER_KEYS": str(key_path),
        "OTA_LOG_LEVEL": "WARNING",
    }
    log = (work / f"{case}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {(work / f'{case}.log').read_text()[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        before = _status(proc.pid, "VmRSS")
        with artifact_path.open("rb") as f:
            r = httpx.post(
                f"{base}/v1/models/{MODEL}/versions",
                content=f,
                headers={"Authorization": "Bearer dev-admin-token", "Content-Type": "application/octet-stream"},
                timeout=300,
            )
        peak = _status(proc.pid, "VmHWM")
        size = artifact_path.stat().st_size
        return (
            f"{case}: {size / MiB:.0f} MiB upload → {r.status_code} {r.json().get('reason', '')}; "
            f"peak RSS +{(peak - before) / MiB:.0f} MiB"
        )
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    key = A.generate_key()
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        work = Path(tmp)
        key_path = work / "publisher.pub.pem"
        A.save_public_key(key, key_path)
        junk = work / "junk.ota"
        junk_signature_artifact(junk, key, 250 * MiB)
        print(measure("junk-signature", junk, key_path, work), flush=True)
        junk.unlink()
        bomb = work / "bomb.ota"
        signed_bomb_artifact(bomb, key, 1024 * MiB)
        print(measure("signed-bomb", bomb, key_path, work), flush=True)


if __name__ == "__main__":
    main()
