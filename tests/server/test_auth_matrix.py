"""The authorization matrix: every endpoint × no token, wrong token, another device's token,
device token, admin token. Admin endpoints refuse devices; device endpoints refuse admins and act
only for the calling device; nothing accepts a forged, random or revoked token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

import artifact as A
from server.core.security import DeviceIdentity, Signer
from tests.support import trust_keys, trust_root

from .conftest import ADMIN, ENROLLMENT_SECRET, Env, assert_problem, bearer, enroll, publish, release

# Authorization does not depend on the storage backend: both databases, both storages, two pairs.
pytestmark = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-s3"], indirect=True)


@dataclass
class Fleet:
    client: TestClient
    principals: dict[str, dict[str, str]]
    blob: str
    artifact_v2: bytes


@pytest.fixture()
def fleet(env: Env) -> Fleet:
    client = env.client()
    v1 = release(client, env.artifact(1))
    v2 = env.artifact(2)  # built once: a second build may carry another created_at, so other bytes
    publish(client, v2)
    r = client.post("/v1/rollouts", json={"model": "shapes", "version": 2}, headers=ADMIN)  # rollout 2: running
    assert r.status_code == 201 and r.json()["id"] == 2, r.text
    publish(client, env.artifact(1, model="other"), model="other")
    device = enroll(client, "dev-a")
    other = enroll(client, "dev-b")
    doomed = enroll(client, "dev-c")
    assert client.delete("/v1/devices/dev-c", headers=ADMIN).status_code == 204
    forged = Signer("not-the-server-secret").device_token(DeviceIdentity(1, "dev-a", "shapes", "0" * 32))
    signer = Signer(env.base["secret_key"])
    a = signer.read_device_token(device)
    assert a is not None
    expired = signer.device_token(DeviceIdentity(a.pk, a.device_id, a.model, a.token_id, expires=1))
    principals = {
        "none": {},
        "random token": bearer("not-a-token"),
        "forged device token": bearer(forged),
        "revoked device token": bearer(doomed),
        "expired device token": bearer(expired),
        "admin-looking token": bearer("otaa_" + "x" * 43),
        "other device": bearer(other),
        "device": bearer(device),
        "admin": ADMIN,
    }
    return Fleet(client, principals, v1["payload"]["sha256"], v2)


Call = Callable[[Fleet, dict[str, str]], Any]
_ROOT_KEY = A.generate_key()
TRUST_ROOT = trust_root(1, [_ROOT_KEY], [_ROOT_KEY])
TRUST_KEYS = trust_keys(1, [A.generate_key()], [_ROOT_KEY])
UNAUTHENTICATED = (
    "none",
    "random token",
    "forged device token",
    "revoked device token",
    "expired device token",
    "admin-looking token",
)

ADMIN_ENDPOINTS: dict[str, Call] = {
    "POST /v1/models/{m}/versions": lambda f, h: f.client.post(
        "/v1/models/shapes/versions", content=f.artifact_v2, headers=h
    ),
    "GET /v1/models": lambda f, h: f.client.get("/v1/models", headers=h),
    "GET /v1/models/{m}/versions": lambda f, h: f.client.get("/v1/models/shapes/versions", headers=h),
    "GET /v1/models/{m}/versions/{v}": lambda f, h: f.client.get("/v1/models/shapes/versions/1", headers=h),
    "POST /v1/models/{m}/versions/{v}/revoke": lambda f, h: f.client.post(
        "/v1/models/shapes/versions/1/revoke", headers=h
    ),
    "GET /v1/devices": lambda f, h: f.client.get("/v1/devices", headers=h),
    "GET /v1/devices/{id}": lambda f, h: f.client.get("/v1/devices/dev-a", headers=h),
    "DELETE /v1/devices/{id}": lambda f, h: f.client.delete("/v1/devices/dev-a", headers=h),
    "GET /v1/fleet": lambda f, h: f.client.get("/v1/fleet", headers=h),
    "POST /v1/rollouts": lambda f, h: f.client.post("/v1/rollouts", json={"model": "other", "version": 1}, headers=h),
    "GET /v1/rollouts": lambda f, h: f.client.get("/v1/rollouts", headers=h),
    "GET /v1/rollouts/{id}": lambda f, h: f.client.get("/v1/rollouts/2", headers=h),
    "POST /v1/rollouts/{id}/pause": lambda f, h: f.client.post("/v1/rollouts/2/pause", headers=h),
    "POST /v1/rollouts/{id}/resume": lambda f, h: (
        f.client.post("/v1/rollouts/2/pause", headers=h),
        f.client.post("/v1/rollouts/2/resume", headers=h),
    )[1],
    "POST /v1/rollouts/{id}/abort": lambda f, h: f.client.post("/v1/rollouts/2/abort", headers=h),
    "POST /v1/rollouts/{id}/advance": lambda f, h: f.client.post("/v1/rollouts/2/advance", headers=h),
    "PUT /v1/trust/root": lambda f, h: f.client.put("/v1/trust/root", content=TRUST_ROOT, headers=h),
    "PUT /v1/trust/keys": lambda f, h: (
        f.client.put("/v1/trust/root", content=TRUST_ROOT, headers=h),
        f.client.put("/v1/trust/keys", content=TRUST_KEYS, headers=h),
    )[1],
}
DEVICE_ENDPOINTS: dict[str, Call] = {
    "GET /v1/device/update": lambda f, h: f.client.get("/v1/device/update?current_version=0", headers=h),
    "POST /v1/device/events": lambda f, h: f.client.post("/v1/device/events", json=[{"type": "checking"}], headers=h),
    "POST /v1/device/token": lambda f, h: f.client.post("/v1/device/token", headers=h),
}
BLOB_ENDPOINTS: dict[str, Call] = {
    "GET /v1/blobs/{sha}": lambda f, h: f.client.get(f"/v1/blobs/{f.blob}", headers=h),
    "HEAD /v1/blobs/{sha}": lambda f, h: f.client.head(f"/v1/blobs/{f.blob}", headers=h),
}
PUBLIC_ENDPOINTS: dict[str, Call] = {
    "GET /healthz": lambda f, h: f.client.get("/healthz", headers=h),
    "GET /readyz": lambda f, h: f.client.get("/readyz", headers=h),
    "GET /metrics": lambda f, h: f.client.get("/metrics", headers=h),
    "GET /openapi.json": lambda f, h: f.client.get("/openapi.json", headers=h),
}


@pytest.mark.parametrize("endpoint", list(ADMIN_ENDPOINTS))
def test_admin_endpoint_refuses_everyone_but_admins(fleet: Fleet, endpoint: str) -> None:
    call = ADMIN_ENDPOINTS[endpoint]
    for who in UNAUTHENTICATED:
        r = call(fleet, fleet.principals[who])
        assert_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"].startswith("Bearer"), who
    for who in ("other device", "device"):
        assert_problem(call(fleet, fleet.principals[who]), 403, "forbidden")
    r = call(fleet, fleet.principals["admin"])
    assert r.status_code in (200, 201, 204), (endpoint, r.text)


@pytest.mark.parametrize("endpoint", list(DEVICE_ENDPOINTS))
def test_device_endpoint_refuses_admins_and_strangers(fleet: Fleet, endpoint: str) -> None:
    call = DEVICE_ENDPOINTS[endpoint]
    for who in UNAUTHENTICATED:
        assert_problem(call(fleet, fleet.principals[who]), 401, "unauthenticated")
    assert_problem(call(fleet, fleet.principals["admin"]), 403, "forbidden")
    for who in ("other device", "device"):
        assert call(fleet, fleet.principals[who]).status_code == 200, who


@pytest.mark.parametrize("endpoint", list(BLOB_ENDPOINTS))
def test_blob_download_needs_a_token_or_a_signed_url(fleet: Fleet, endpoint: str) -> None:
    call = BLOB_ENDPOINTS[endpoint]
    for who in UNAUTHENTICATED:
        assert_problem_or_head(call(fleet, fleet.principals[who]), 401)
    for who in ("other device", "device", "admin"):
        assert call(fleet, fleet.principals[who]).status_code == 200, who


def assert_problem_or_head(response: Any, status: int) -> None:
    if response.request.method == "HEAD":  # a HEAD answer has no body to check
        assert response.status_code == status
    else:
        assert_problem(response, status)


@pytest.mark.parametrize("endpoint", list(PUBLIC_ENDPOINTS))
def test_operations_endpoints_need_no_token(fleet: Fleet, endpoint: str) -> None:
    for who, headers in fleet.principals.items():
        assert PUBLIC_ENDPOINTS[endpoint](fleet, headers).status_code == 200, who


def test_enrollment_needs_the_secret_not_a_token(fleet: Fleet) -> None:
    enrolled = fleet.client.get("/v1/devices", headers=ADMIN).json()
    for who, headers in fleet.principals.items():
        r = fleet.client.post(
            "/v1/devices/enroll", json={"enrollment_secret": "guess", "model": "shapes"}, headers=headers
        )
        assert "token" not in assert_problem(r, 403, "enrollment-refused"), who
    assert fleet.client.get("/v1/devices", headers=ADMIN).json() == enrolled  # no device was added
    r = fleet.client.post("/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes"})
    assert r.status_code == 201


def test_a_device_token_acts_only_for_its_own_device(fleet: Fleet) -> None:
    c = fleet.client
    r = c.post(
        "/v1/device/events",
        json=[{"type": "failed", "version": 1, "reason": "boom"}],
        headers=fleet.principals["other device"],
    )
    assert r.status_code == 200
    a = c.get("/v1/devices/dev-a", headers=ADMIN).json()
    b = c.get("/v1/devices/dev-b", headers=ADMIN).json()
    assert a["status"] == "enrolled" and a["recent_events"] == []
    assert b["status"] == "failed" and b["status_reason"] == "boom"
