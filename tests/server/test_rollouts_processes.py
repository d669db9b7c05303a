"""Two real `ota-server serve` processes on one PostgreSQL: every rollout transition happens exactly once.

Both processes run the controller every 50 ms against the same rollouts, so they race on every
verdict; compare-and-set must let exactly one of them make each transition, record it in the
history and count it in its Prometheus counter — none skipped, none doubled — and neither may
offer the version to a device outside the cohort of the stage in force.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

import artifact as A
from bench._common import private_pg_schema
from server.db.models import RolloutDevice

from . import helpers
from .conftest import ENROLLMENT_SECRET, free_port

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bucket(rollout_id: int, device_id: str) -> int:
    return int(hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()[:8], 16) % 10000


@pytest.fixture()
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[str], str, A.SigningKey]]:
    request.getfixturevalue("pg_url")  # skip or fail exactly like the rest of the suite
    key = A.generate_key()
    A.save_public_key(key, tmp_path / "pub.pem")
    with private_pg_schema("ota_roll") as url:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "OTA_DATABASE_URL": url,
            "OTA_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
            "OTA_ADMIN_TOKEN": ADMIN_TOKEN,
            "OTA_ENROLLMENT_SECRET": ENROLLMENT_SECRET,
            "OTA_SECRET_KEY": "test-secret-key-0123456789abcdef",
            "OTA_PUBLISHER_KEYS": str(tmp_path / "pub.pem"),
            "OTA_CACHE_SECONDS": "0.1",
            "OTA_SEEN_FLUSH_SECONDS": "0.1",
            "OTA_ROLLOUT_EVAL_SECONDS": "0.05",
            "OTA_LOG_LEVEL": "WARNING",
        }
        procs, bases = [], []
        for i in range(2):
            port = free_port()
            log = (tmp_path / f"server-{i}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "server", "serve", "--port", str(port)],
                    env=env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        try:
            for proc, base in zip(procs, bases, strict=True):
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None, (tmp_path / "server-0.log").read_text()
                    assert time.monotonic() < deadline, "server did not become ready"
                    time.sleep(0.1)
            yield bases, url, key
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def transitions_counted(bases: list[str]) -> Counter[str]:
    total: Counter[str] = Counter()
    for base in bases:
        text = httpx.get(f"{base}/metrics", timeout=5).text
        for event, value in re.findall(r'^ota_rollout_transitions_total\{event="(\w+)"\} (\S+)$', text, re.M):
            total[event] += int(float(value))
    return total


def test_two_processes_make_every_transition_exactly_once(servers: tuple[list[str], str, A.SigningKey]) -> None:
    bases, url, key = servers
    a, b = bases
    http = httpx.Client(timeout=30)

    def publish(base: str, version: int) -> None:
        r = http.post(
            f"{base}/v1/models/shapes/versions", content=helpers.build_artifact(key, version=version), headers=ADMIN
        )
        assert r.status_code == 201, r.text

    def rollout(base: str, version: int, **body: Any) -> dict[str, Any]:
        r = http.post(f"{base}/v1/rollouts", json={"model": "shapes", "version": version, **body}, headers=ADMIN)
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    publish(a, 1)
    assert rollout(a, 1, stages=[{"percent": 100}], min_devices=0)["state"] == "completed"
    tokens = {}
    for i in range(24):
        r = http.post(
            f"{bases[i % 2]}/v1/devices/enroll",
            json={"enrollment_secret": ENROLLMENT_SECRET, "device_id": f"cam-{i:02d}", "model": "shapes"},
        )
        tokens[f"cam-{i:02d}"] = {"Authorization": f"Bearer {r.json()['token']}"}

    # A good version: three stages, every offered device installs; both processes judge it.
    publish(b, 2)
    stages = [{"percent": 20}, {"percent": 60}, {"percent": 100}]
    good = rollout(b, 2, stages=stages, min_devices=1)
    on_v2: set[str] = set()

    def step() -> bool:
        for n, (device_id, auth) in enumerate(tokens.items()):
            if device_id in on_v2:
                continue
            r = http.get(f"{bases[n % 2]}/v1/device/update?current_version=1", headers=auth)
            if r.status_code == 200 and r.json()["version"] == 2:
                http.post(
                    f"{bases[(n + 1) % 2]}/v1/device/events", json=[{"type": "installed", "version": 2}], headers=auth
                )
                on_v2.add(device_id)
        return http.get(f"{a}/v1/rollouts/{good['id']}", headers=ADMIN).json()["state"] == "completed"

    wait_until(step, timeout=60, what="the good rollout to complete")
    wait_until(lambda: step() and len(on_v2) == 24, timeout=30, what="the rest of the fleet to follow the baseline")
    doc = http.get(f"{b}/v1/rollouts/{good['id']}", headers=ADMIN).json()
    assert [h["event"] for h in doc["history"]] == ["created", "stage_advanced", "stage_advanced", "completed"]
    assert [s["counts"]["installed"] for s in doc["stages"]] == [s["cohort"] for s in doc["stages"]]

    # No device was first offered v2 in a stage whose cohort does not contain it.
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(RolloutDevice.device_pk, RolloutDevice.stage).where(RolloutDevice.rollout_id == good["id"])
            ).all()
    finally:
        engine.dispose()
    ids = {i + 1: f"cam-{i:02d}" for i in range(24)}  # enrolled in this order into an empty schema
    assert len(rows) == 24
    for pk, stage in rows:
        assert bucket(good["id"], ids[pk]) < stages[stage]["percent"] * 100, (ids[pk], stage)

    # A bad version: the canaries refuse it; it halts once, at the first stage.
    publish(a, 3)
    bad = rollout(a, 3, stages=[{"percent": 50, "soak_seconds": 3600}, {"percent": 100}], min_devices=2)
    failed: set[str] = set()

    def refuse() -> bool:
        for n, (device_id, auth) in enumerate(tokens.items()):
            if device_id in failed:
                continue
            r = http.get(f"{bases[n % 2]}/v1/device/update?current_version=2", headers=auth)
            if r.status_code == 200:
                event = {"type": "failed", "version": 3, "reason": "validation_failed"}
                http.post(f"{bases[(n + 1) % 2]}/v1/device/events", json=[event], headers=auth)
                failed.add(device_id)
        return http.get(f"{b}/v1/rollouts/{bad['id']}", headers=ADMIN).json()["state"] == "paused"

    wait_until(refuse, timeout=60, what="the bad rollout to halt")
    time.sleep(0.5)  # ten more evaluation rounds in each process: nothing more may happen
    doc = http.get(f"{a}/v1/rollouts/{bad['id']}", headers=ADMIN).json()
    assert doc["reason"] == "failure_threshold" and doc["stage"] == 0
    assert [(h["event"], h["by"]) for h in doc["history"]] == [("created", "bootstrap"), ("halted", "system")]
    assert all(bucket(bad["id"], d) < 5000 for d in failed)
    assert transitions_counted(bases) == {"created": 3, "completed": 2, "stage_advanced": 2, "halted": 1}
    assert [m["offered_version"] for m in http.get(f"{a}/v1/models", headers=ADMIN).json()] == [2]
