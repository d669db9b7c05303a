"""Key rotation reaches a device without touching it: a real `ota-server serve` and a real
`device-agent run --root` process on loopback.

The device is given root v1 once. The operator then replaces a leaked publisher key and rotates the
root itself, over the admin API only; the device walks the chain, stops serving the model signed
by the revoked key, and installs the next version signed by the new publisher key. The server
refuses new uploads by the revoked key.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import artifact as A
from tests.device_agent.models import make_release
from tests.support import MODEL, trust_keys, trust_root, wait_for

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": "Bearer e2e-admin-token-0123456789abcdef"}
SECRET = "e2e-enrollment-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        "OTA_DATABASE_URL": f"sqlite:///{tmp_path / 'ota.db'}",
        "OTA_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "OTA_ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
        "OTA_ENROLLMENT_SECRET": SECRET,
        "OTA_SECRET_KEY": "e2e-secret-key-0123456789abcdef",
        "OTA_CACHE_SECONDS": "0.1",
        "OTA_LOG_LEVEL": "WARNING",
    }  # no OTA_PUBLISHER_KEYS: every publisher key comes from the keys document
    proc = start([sys.executable, "-m", "server", "serve", "--port", str(port)], tmp_path / "server.log", env)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 60, "the server to be ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def artifact(version: int, key: A.SigningKey) -> bytes:
    r = make_release(version, [key])
    return A.artifact_bytes(r.manifest_bytes, [A.Signature.from_dict(s) for s in r.signatures], r.payload)


def test_publisher_key_and_root_rotate_without_touching_the_device(server: str, tmp_path: Path) -> None:
    root1_key, root2_key, leaked, fresh = (A.generate_key() for _ in range(4))
    root1 = trust_root(1, [root1_key], [root1_key])
    (tmp_path / "root.json").write_bytes(root1)  # the only trust material the device ever gets
    admin = httpx.Client(base_url=server, headers=ADMIN, timeout=30)

    def put(kind: str, body: bytes) -> None:
        r = admin.put(f"/v1/trust/{kind}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text

    def release(version: int, key: A.SigningKey) -> httpx.Response:
        r = admin.post(f"/v1/models/{MODEL}/versions", content=artifact(version, key))
        if r.status_code == 201:
            body = {"model": MODEL, "version": version, "stages": [{"percent": 100, "soak_seconds": 0}]}
            assert admin.post("/v1/rollouts", json={**body, "min_devices": 0}).status_code == 201
        return r

    put("root", root1)
    put("keys", trust_keys(1, [leaked], [root1_key]))
    assert release(1, leaked).status_code == 201

    port = free_port()
    command = [
        sys.executable, "-m", "device_agent", "run", "--server", server, "--model", MODEL,
        "--model-dir", str(tmp_path / "device"), "--root", str(tmp_path / "root.json"),
        "--serve", f"127.0.0.1:{port}", "--poll-interval", "0.2", "--threads", "1",
    ]  # fmt: skip
    agent = start(
        command,
        tmp_path / "agent.log",
        {"OTA_ENROLLMENT_SECRET": SECRET},
    )

    def status(check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            try:
                s: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()
            except httpx.TransportError:
                return None
            return s if check(s) else None

        return dict(wait_for(probe, 60, what))

    try:
        status(lambda s: s["version"] == 1, "v1 signed by the first publisher key")
        # The leaked key is replaced, and the root rotated, by the operator alone.
        put("root", trust_root(2, [root2_key], [root1_key, root2_key]))
        put("keys", trust_keys(2, [fresh], [root2_key], revoked=[leaked]))
        refused = release(2, leaked)
        assert refused.status_code == 422 and leaked.keyid in refused.json()["detail"]
        status(lambda s: s["version"] is None, "v1 (signed by the revoked key) to stop being served")
        assert release(2, fresh).status_code == 201
        final = status(lambda s: s["version"] == 2, "v2 signed by the new publisher key")
        assert final["trust"]["tag"] == "r2-k2" and final["trust"]["publisher_keys"] == [fresh.keyid]
        device = admin.get("/v1/devices", params={"model": MODEL}).json()["items"][0]["device_id"]
        events = admin.get(f"/v1/devices/{device}").json()["recent_events"]
        assert any(e["type"] == "rolled_back" and (e["reason"] or "").startswith("revoked_key: ") for e in events), (
            events
        )
    finally:
        agent.terminate()
        agent.wait(timeout=30)
