"""docker-compose.yml's configuration, started natively: it migrates once, serves with 2 workers,
passes its own health check, and its simulated fleet installs what is rolled out.

Compose's services become local parts — PostgreSQL at 127.0.0.1:5432 (a private schema), moto's S3
server for MinIO, a temporary directory for each bind mount — and its commands run as written, with
only hostnames, ports and mounted paths mapped (and the fleet shrunk to three devices that stop once
they run version 1). Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

import artifact as A
from bench._common import private_pg_schema
from tests.device_agent.models import golden_cases
from tests.support import tiny_classifier

from . import helpers
from .conftest import free_port
from .deployment import REPO, env_example, load_compose, service_environment, volume_map

PROGRAMS = {"ota-server": [sys.executable, "-m", "server"], "device-agent": [sys.executable, "-m", "device_agent"]}


@dataclass
class Native:
    """Compose's names mapped to what runs here."""

    compose: dict[str, Any]
    dotenv: dict[str, str]
    root: Path
    replace: dict[str, str] = field(default_factory=dict)  # URL prefixes and mounted paths

    def value(self, text: str) -> str:
        for old, new in self.replace.items():
            if text == old or text.startswith(old + "/"):
                return new + text[len(old) :]
        return text

    def command(self, service: str, **flags: str) -> list[str]:
        """The service's command with programs, hosts and paths mapped and `--flag value` overridden."""
        argv = list(self.compose["services"][service]["command"])
        out = [*PROGRAMS[argv[0]]]
        rest = argv[1:]
        i = 0
        while i < len(rest):
            arg = rest[i]
            name = arg.removeprefix("--").replace("-", "_")
            if arg.startswith("--") and name in flags and i + 1 < len(rest):
                out += [arg, flags.pop(name)]
                i += 2
                continue
            out.append(self.value(arg))
            i += 1
        for name, value in flags.items():  # flags the compose command does not have ("": a bare switch)
            out += [f"--{name.replace('_', '-')}", value] if value else [f"--{name.replace('_', '-')}"]
        return out

    def environment(self, service: str, **overrides: str) -> dict[str, str]:
        env = {k: self.value(v) for k, v in service_environment(self.compose, service, self.dotenv).items()}
        return {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(self.root), **env, **overrides}


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ota-server serve` in its own process group (the supervisor and its workers stop together)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_healthy(probe: list[str], env: dict[str, str], server: subprocess.Popen[bytes], log: Path) -> None:
    """Run the compose health check until it passes, like Docker would (bounded; no fixed sleep)."""
    deadline = time.monotonic() + 90
    while True:
        result = run(probe, env, timeout=30)
        if result.returncode == 0:
            return
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"never healthy: {result.stderr}\n{log.read_text()}"
        time.sleep(0.2)


def workers_of(pid: int) -> int:
    """How many uvicorn worker processes the supervisor `pid` runs now."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            count += 1
    return count


@pytest.fixture()
def native(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Native, str]]:
    request.getfixturevalue("pg_url")  # skip or fail exactly like the rest of the suite
    s3 = request.getfixturevalue("s3_endpoint")
    dotenv = env_example(strong_secrets=True)
    compose = load_compose(dotenv)
    port = free_port()
    mounts = {target: tmp_path / source.strip("./") for target, source in volume_map(compose, "server").items()}
    mounts |= {"/data": tmp_path / "fleet-volume"}  # the fleet's named volume
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
    with private_pg_schema("ota_deploy") as database_url:
        compose_db = service_environment(compose, "server", dotenv)["OTA_DATABASE_URL"]
        replace = {
            compose_db: database_url,  # user, database and schema of the test server; same driver
            "http://minio:9000": s3,
            "http://server:8000": f"http://127.0.0.1:{port}",
            "0.0.0.0": "127.0.0.1",
            **{target: str(path) for target, path in mounts.items()},
        }
        assert compose_db.split("://")[0] == database_url.split("://")[0]
        yield Native(compose, dotenv, tmp_path, replace), str(port)


def test_compose_configuration_migrates_once_serves_and_its_fleet_installs_an_update(
    native: tuple[Native, str], tmp_path: Path
) -> None:
    deploy, port = native
    key = A.generate_key()
    keys_dir = Path(deploy.value("/keys"))
    A.save_public_key(key, keys_dir / "signing.pub")
    server_env = deploy.environment("server")
    s3 = boto3.client("s3", endpoint_url=server_env["OTA_S3_ENDPOINT_URL"], region_name="us-east-1")
    bucket = server_env["OTA_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}

    migrated = run(deploy.command("migrate"), deploy.environment("migrate"))
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision" in migrated.stdout

    log = tmp_path / "server.log"
    probe = deploy.compose["services"]["server"]["healthcheck"]["test"][1:]
    probe = [*PROGRAMS[probe[0]], *(a.replace(":8000/", f":{port}/") for a in probe[1:])]
    with serving(deploy.command("server", port=port), server_env, log) as server:
        wait_healthy(probe, server_env, server, log)
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/readyz", timeout=5).json()
        assert ready == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}
        assert workers_of(server.pid) == 2
        assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}  # created by the server
        assert "Running upgrade" not in log.read_text()  # serve --no-migrate: the job migrated, once

        admin = {"Authorization": f"Bearer {deploy.dotenv['OTA_ADMIN_TOKEN']}"}
        model = tiny_classifier(0, version_tweak=1)
        golden = {"tolerance": 1e-4, "cases": golden_cases(model, 8, image_case=False)}
        artifact = helpers.build_artifact(key, version=1, onnx_bytes=model, golden=golden)
        r = httpx.post(f"{base}/v1/models/shapes/versions", content=artifact, headers=admin, timeout=30)
        assert r.status_code == 201, r.text
        rollout = {"model": "shapes", "version": 1, "stages": [{"percent": 100, "soak_seconds": 0}], "min_devices": 0}
        r = httpx.post(f"{base}/v1/rollouts", json=rollout, headers=admin, timeout=10)
        assert r.status_code == 201, r.text

        fleet = run(
            deploy.command("fleet", devices="3", until_version="1", timeout="90", poll_interval="0.5", json=""),
            deploy.environment("fleet"),
            timeout=150,
        )
        assert fleet.returncode == 0, fleet.stderr[-3000:]
        summary = json.loads(fleet.stdout)
        assert summary["ok"] and summary["versions"] == {"v1": 3}
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.status_code == 401  # production: the metrics token is required


def test_serve_without_migrate_refuses_a_database_that_is_not_current(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "OTA_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    env["OTA_STORAGE_URL"] = f"file://{tmp_path / 'blobs'}"
    refused = run([*PROGRAMS["ota-server"], "serve", "--no-migrate", "--port", str(free_port())], env)
    assert refused.returncode == 2
    assert "database is at revision none (empty)" in refused.stderr and "run `ota-server migrate`" in refused.stderr
    probe = run([*PROGRAMS["ota-server"], "healthcheck", "--url", f"http://127.0.0.1:{free_port()}/readyz"], env)
    assert probe.returncode == 1 and probe.stderr.startswith("ota-server: not ready:")
    assert "Traceback" not in refused.stderr + probe.stderr


def test_forwarded_for_counts_only_from_trusted_proxies(tmp_path: Path) -> None:
    """Behind a load balancer every client arrives from its address: X-Forwarded-For names the client,
    but only when the peer is in --forwarded-allow-ips; anyone else cannot pick their own bucket."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "OTA_DATABASE_URL": f"sqlite:///{tmp_path / 'ota.db'}",
        "OTA_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "OTA_ENROLLMENT_SECRET": "xff-enrollment-secret-0123456789",
        "OTA_ENROLL_BURST": "2",
        "OTA_ENROLL_RATE": "0.001",
        "OTA_LOG_LEVEL": "WARNING",
    }
    argv = [*PROGRAMS["ota-server"], "serve", "--port", str(port), "--forwarded-allow-ips", "127.0.0.1"]
    log = tmp_path / "server.log"
    probe = [*PROGRAMS["ota-server"], "healthcheck", "--url", f"http://127.0.0.1:{port}/readyz"]
    body = {"enrollment_secret": env["OTA_ENROLLMENT_SECRET"], "model": "shapes"}
    url = f"http://127.0.0.1:{port}/v1/devices/enroll"
    with serving(argv, env, log) as server:
        wait_healthy(probe, env, server, log)
        with httpx.Client(timeout=10) as proxy:  # 127.0.0.1: the trusted proxy
            forwarded = [proxy.post(url, json=body, headers={"X-Forwarded-For": "203.0.113.1"}) for _ in range(3)]
            assert [r.status_code for r in forwarded] == [201, 201, 429]
            assert forwarded[2].headers["Retry-After"]
            other = proxy.post(url, json=body, headers={"X-Forwarded-For": "203.0.113.2"})
            assert other.status_code == 201  # another client behind the same proxy has its own bucket
        stranger = httpx.HTTPTransport(local_address="127.0.0.2")  # not a trusted proxy
        with httpx.Client(timeout=10, transport=stranger) as client:
            spoofed = [
                client.post(url, json=body, headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                for i in range(3)
            ]
            assert spoofed == [201, 201, 429]  # its header is ignored: one bucket, 127.0.0.2's
