"""Helpers of the staged-rollout tests (`test_rollouts*.py`): an app whose controller runs only when told
to, and the calls an operator and a device make to it.

The controller runs every OTA_ROLLOUT_EVAL_SECONDS in the background; `client` sets that interval
to an hour and the tests drive evaluation directly (`evaluate`), so that every verdict happens
exactly when the test says. A module binds `client = rollouts.client` (it replaces conftest's) and
sets `pytestmark = rollouts.ON_BOTH_DATABASES`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.core.services import Services

from .conftest import ADMIN, Env, bearer, enroll, publish, release

ON_BOTH_DATABASES = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)


def expected_bucket(rollout_id: int, device_id: str) -> int:
    """DESIGN.md's rule, written out independently of the server's code."""
    return int(hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()[:8], 16) % 10000


def services(client: TestClient) -> Services:
    s: Services = client.app.state.services  # type: ignore[attr-defined]
    return s


def evaluate(client: TestClient, **kw: Any) -> list[str]:
    """One evaluation pass of the controller in this process (after writing buffered offers)."""
    services(client).rollouts.offers.flush()
    return services(client).rollouts.evaluate_once(**kw)


def start(client: TestClient, version: int = 2, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/rollouts", json={"model": "shapes", "version": version, **body}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/rollouts/{r.json()['id']}"
    doc: dict[str, Any] = r.json()
    return doc


def get(client: TestClient, rollout_id: int) -> dict[str, Any]:
    r = client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def offered(client: TestClient, token: str, current: int | None = 1) -> int | None:
    """The version the device is offered (None: 204)."""
    url = "/v1/device/update" if current is None else f"/v1/device/update?current_version={current}"
    r = client.get(url, headers=bearer(token))
    assert r.status_code in (200, 204), r.text
    return r.json()["version"] if r.status_code == 200 else None


def report(client: TestClient, token: str, *events: dict[str, Any]) -> None:
    r = client.post("/v1/device/events", json=list(events), headers=bearer(token))
    assert r.status_code == 200, r.text


def metrics(version: int, p95: float, requests: int, confidence: float = 0.9) -> dict[str, Any]:
    return {
        "type": "metrics",
        "version": version,
        "metrics": {"p50_ms": p95 / 2, "p95_ms": p95, "mean_confidence": confidence, "requests": requests},
    }


_ARTIFACTS: dict[tuple[int, str], bytes] = {}


def artifact(env: Env, version: int, model: str = "shapes") -> bytes:
    """Built and signed once per session: every env signs with the session's key, and building
    the ONNX model and sealing it would otherwise be a good part of each test."""
    if (version, model) not in _ARTIFACTS:
        _ARTIFACTS[version, model] = env.artifact(version, model=model)
    return _ARTIFACTS[version, model]


@pytest.fixture()
def client(env: Env) -> TestClient:
    """v1 is the baseline, v2 is published (not offered); the controller only runs when told to."""
    c = env.client(rollout_eval_seconds=3600)
    release(c, artifact(env, 1))
    publish(c, artifact(env, 2))
    return c


def fleet(client: TestClient, n: int, prefix: str = "cam", **labels: str) -> dict[str, str]:
    return {f"{prefix}-{i:02d}": enroll(client, f"{prefix}-{i:02d}", **labels) for i in range(n)}
