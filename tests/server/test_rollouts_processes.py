"""Two real `ota-server serve` processes on one PostgreSQL: every rollout transition happens exactly once.

Both processes run the controller every 50 ms against the same rollouts, so they race on every
verdict; compare-and-set must let exactly one of them make each transition, record it in the
history and count it in its Prometheus counter — none skipped, none doubled — and neither may
offer the version to a device outside the cohort of the stage in force.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
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
from tests.support import server_process

from . import helpers
from .conftest import ENROLLMENT_SECRET

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bucket(rollout_id: int, device_id: str) -> int:
    return int(hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()[:8], 16) % 10000


@contextlib.contextmanager
def serving(tmp_path: Path, *argvs: list[str]) -> Iterator[tuple[list[str], str, A.SigningKey]]:
    """One `ota-server serve` per argv (extra arguments), all on one fresh PostgreSQL schema."""
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
        with contextlib.ExitStack() as stack:
            bases = [
                stack.enter_context(server_process(env, cwd=tmp_path, log=tmp_path / f"server-{i}.log", args=argv))
                for i, argv in enumerate(argvs)
            ]
            yield bases, url, key


@pytest.fixture()
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[str], str, A.SigningKey]]:
    request.getfixturevalue("pg_url")  # skip or fail exactly like the rest of the suite
    with serving(tmp_path, [], []) as running:
        yield running


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


def test_workers_of_one_serve_make_every_transition_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`serve --workers 2`: two uvicorn workers, each running the controller, race like two servers."""
    request.getfixturevalue("pg_url")
    with serving(tmp_path, ["--workers", "2"]) as ([base], _url, key):
        http = httpx.Client(base_url=base, headers=ADMIN, timeout=30)
        for version in (1, 2, 3):
            r = http.post("/v1/models/shapes/versions", content=helpers.build_artifact(key, version=version))
            assert r.status_code == 201, r.text
        r = http.post("/v1/rollouts", json={"model": "shapes", "version": 1, "stages": [{"percent": 100}]})
        assert r.json()["state"] == "completed", r.text  # no devices yet: v1 is the baseline at once
        tokens = []
        for i in range(8):
            body = {"enrollment_secret": ENROLLMENT_SECRET, "device_id": f"cam-{i}", "model": "shapes"}
            tokens.append({"Authorization": f"Bearer {http.post('/v1/devices/enroll', json=body).json()['token']}"})

        def drive(rollout: dict[str, Any], current: int, event: dict[str, Any], until: str) -> list[str]:
            done: set[int] = set()

            def step() -> list[str] | None:
                for n, auth in enumerate(tokens):
                    r = http.get(f"/v1/device/update?current_version={current}", headers=auth)
                    if n not in done and r.status_code == 200 and r.json()["version"] == rollout["version"]:
                        http.post("/v1/device/events", json=[event], headers=auth)
                        done.add(n)
                doc = http.get(f"/v1/rollouts/{rollout['id']}").json()
                return [h["event"] for h in doc["history"]] if doc["state"] == until else None

            wait_until(step, timeout=60, what=f"rollout of v{rollout['version']} to be {until}")
            time.sleep(0.5)  # ten more evaluation rounds in each worker: nothing more may happen
            return [h["event"] for h in http.get(f"/v1/rollouts/{rollout['id']}").json()["history"]]

        stages = [{"percent": 50}, {"percent": 100}]
        good = http.post("/v1/rollouts", json={"model": "shapes", "version": 2, "stages": stages, "min_devices": 1})
        installed = {"type": "installed", "version": 2}
        assert drive(good.json(), 1, installed, "completed") == ["created", "stage_advanced", "completed"]

        stages = [{"percent": 50, "soak_seconds": 3600}, {"percent": 100}]
        bad = http.post("/v1/rollouts", json={"model": "shapes", "version": 3, "stages": stages, "min_devices": 2})
        refused = {"type": "failed", "version": 3, "reason": "validation_failed"}
        assert drive(bad.json(), 2, refused, "paused") == ["created", "halted"]
