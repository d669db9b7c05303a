"""Rotating `OTA_SECRET_KEY` and the enrollment secret without re-enrolling the fleet.

Each test runs the servers an operator would run in turn on one database: before the rotation
(key A), during its overlap (key B current, A previous until a date in the future) and after it
(the same date, now in the past — what a restart finds once the date has passed). Device tokens,
signed download URLs and dashboard sessions issued under A work through the overlap and are then
refused with a problem that says the key was retired; everything new is signed with B.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.routes.dashboard import COOKIE, SESSION_SECONDS
from server.core.auth import BOOTSTRAP
from server.core.security import DeviceIdentity, Signer, key_id

from .conftest import ADMIN, ENROLLMENT_SECRET, Env, assert_problem, bearer, enroll, release

# Keys and secrets live in the database's rows only as token ids: both databases, file storage
# (signed download URLs are this server's own).
pytestmark = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)

KEY_A = "rotation-key-a-0123456789abcdef"
KEY_B = "rotation-key-b-0123456789abcdef"
SOON = datetime.now(UTC) + timedelta(days=7)
PAST = datetime.now(UTC) - timedelta(seconds=1)


def overlap(until: datetime) -> dict[str, Any]:
    """Key B current, key A accepted until `until`."""
    return {"secret_key": KEY_B, "previous_secret_keys": f"{KEY_A}@{until.isoformat()}"}


def poll(client: TestClient, token: str) -> Any:
    return client.get("/v1/device/update?current_version=0", headers=bearer(token))


def test_token_signed_by_the_previous_key_works_until_its_grace_date_then_is_refused_as_retired(env: Env) -> None:
    token = enroll(env.client(secret_key=KEY_A), "cam-1")
    during = env.client(**overlap(SOON))
    assert poll(during, token).status_code == 204
    assert during.post("/v1/device/events", json=[{"type": "checking"}], headers=bearer(token)).status_code == 200

    after = env.client(**overlap(PAST))
    doc = assert_problem(poll(after, token), 401, "unauthenticated")
    assert f"signed with a secret key retired at {PAST:%Y-%m-%dT%H:%M:%SZ}" in doc["detail"]
    assert KEY_A not in doc["detail"] and key_id(KEY_A) not in doc["detail"]  # nothing of the key leaks
    assert_problem(after.post("/v1/device/events", json=[], headers=bearer(token)), 401, "unauthenticated")


def test_new_tokens_are_signed_with_the_current_key_and_survive_the_retirement(env: Env) -> None:
    old = enroll(env.client(secret_key=KEY_A), "cam-1")
    during = env.client(**overlap(SOON))
    r = during.post("/v1/device/token", headers=bearer(old))
    assert r.status_code == 200, r.text
    renewed = r.json()["token"]
    fresh = enroll(during, "cam-2")
    after = env.client(**overlap(PAST))
    assert poll(after, renewed).status_code == 204 and poll(after, fresh).status_code == 204
    assert_problem(poll(after, old), 401)
    alone = env.client(secret_key=KEY_B)  # A dropped from the configuration: its tokens are strangers
    assert poll(alone, renewed).status_code == 204
    assert "unknown or revoked" in assert_problem(poll(alone, old), 401)["detail"]


def test_download_url_signed_by_the_previous_key_works_until_its_grace_date(env: Env) -> None:
    before = env.client(secret_key=KEY_A)
    release(before, env.artifact(1))
    url = poll(before, enroll(before, "cam-1")).json()["download"]["url"]
    assert f"kid={key_id(KEY_A)}" in url
    assert env.client(**overlap(SOON)).get(url).status_code == 200
    doc = assert_problem(env.client(**overlap(PAST)).get(url), 403, "forbidden")
    assert "signed with a secret key retired at" in doc["detail"] and "poll again" in doc["detail"]


def test_download_url_signed_before_key_ids_still_verifies_by_trial(env: Env) -> None:
    client = env.client(**overlap(SOON))
    body = release(client, env.artifact(1))
    sha, expires = body["payload"]["sha256"], int(time.time()) + 600
    legacy = f"/v1/blobs/{sha}?expires={expires}&sig={Signer(KEY_A).url_signature(sha, expires)}"
    assert client.get(legacy).status_code == 200
    forged = f"/v1/blobs/{sha}?expires={expires}&sig={Signer('not-our-key').url_signature(sha, expires)}"
    assert "invalid" in assert_problem(client.get(forged), 403)["detail"]


def test_token_issued_before_key_ids_and_expiries_keeps_working_and_is_renewed(env: Env) -> None:
    before = env.client(secret_key=KEY_A)
    identity = Signer(KEY_A).read_device_token(enroll(before, "cam-1"))
    assert identity is not None
    legacy = legacy_device_token(KEY_A, identity)  # what the release before key ids handed out
    during = env.client(**overlap(SOON))
    assert poll(during, legacy).status_code == 204
    r = during.post("/v1/device/token", headers=bearer(legacy))
    assert r.status_code == 200 and poll(during, r.json()["token"]).status_code == 204
    assert "retired" in assert_problem(poll(env.client(**overlap(PAST)), legacy), 401)["detail"]


def legacy_device_token(secret_key: str, identity: DeviceIdentity) -> str:
    key = hmac.new(secret_key.encode(), b"ota device token v1", hashlib.sha256).digest()
    body = f"{identity.pk}/{identity.token_id}/{identity.device_id}/{identity.model}".encode()

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"otad_{b64(body)}.{b64(hmac.digest(key, body, 'sha256'))}"


def test_dashboard_session_signed_by_the_previous_key_works_until_its_grace_date(env: Env) -> None:
    cookie = Signer(KEY_A).session_cookie(BOOTSTRAP, ttl=SESSION_SECONDS)
    during = env.client(**overlap(SOON))
    during.cookies.set(COOKIE, cookie)
    assert during.get("/", follow_redirects=False).status_code == 200
    after = env.client(**overlap(PAST))
    after.cookies.set(COOKIE, cookie)
    r = after.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_enrollment_with_the_previous_secret_works_within_grace_and_fails_after(env: Env) -> None:
    new_secret = "enrollment-secret-b-0123456789"

    def enroll_with(client: TestClient, secret: str, device_id: str) -> Any:
        return client.post(
            "/v1/devices/enroll", json={"enrollment_secret": secret, "model": "shapes", "device_id": device_id}
        )

    def rotated(until: datetime) -> TestClient:
        return env.client(
            enrollment_secret=new_secret, previous_enrollment_secrets=f"{ENROLLMENT_SECRET}@{until.isoformat()}"
        )

    during = rotated(SOON)
    assert enroll_with(during, ENROLLMENT_SECRET, "cam-1").status_code == 201
    assert enroll_with(during, new_secret, "cam-2").status_code == 201
    after = rotated(PAST)
    doc = assert_problem(enroll_with(after, ENROLLMENT_SECRET, "cam-3"), 403, "enrollment-refused")
    assert f"retired at {PAST:%Y-%m-%dT%H:%M:%SZ}" in doc["detail"] and ENROLLMENT_SECRET not in doc["detail"]
    assert enroll_with(after, new_secret, "cam-3").status_code == 201
    assert "is wrong" in assert_problem(enroll_with(after, "a-guess", "cam-4"), 403)["detail"]


def test_expired_token_is_refused_with_its_expiry_and_a_renewed_one_works(env: Env) -> None:
    client = env.client(secret_key=KEY_A, device_token_seconds=3600)
    r = client.post("/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes"})
    assert r.status_code == 201 and 3590 <= r.json()["expires_in"] <= 3600
    issued = datetime.fromisoformat(r.json()["expires_at"]).timestamp() - time.time()
    assert 3590 <= issued <= 3601
    identity = Signer(KEY_A).read_device_token(r.json()["token"])
    assert identity is not None and identity.expires is not None
    lapsed = Signer(KEY_A).device_token(
        DeviceIdentity(identity.pk, identity.device_id, identity.model, identity.token_id, expires=int(time.time()) - 5)
    )
    doc = assert_problem(poll(client, lapsed), 401, "unauthenticated")
    assert "this device token expired at" in doc["detail"]
    assert_problem(client.post("/v1/device/token", headers=bearer(lapsed)), 401)  # renewing needs a live token
    renewed = client.post("/v1/device/token", headers=bearer(r.json()["token"]))
    assert renewed.status_code == 200 and poll(client, renewed.json()["token"]).status_code == 204


def test_enrolled_device_enrolls_again_with_its_previous_token_and_keeps_its_history(env: Env) -> None:
    before = env.client(secret_key=KEY_A)
    old = enroll(before, "cam-1", site="north")
    before.post("/v1/device/events", json=[{"type": "installed", "version": 1}], headers=bearer(old))
    other = enroll(before, "cam-2")
    after = env.client(**overlap(PAST))
    body = {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "device_id": "cam-1"}
    doc = assert_problem(after.post("/v1/devices/enroll", json=body), 409, "device-exists")
    assert "previous_token" in doc["detail"]
    for stranger in (
        other,
        "otad_garbage",
        Signer("not-our-key").device_token(DeviceIdentity(1, "cam-1", "shapes", "0" * 32)),
    ):
        assert_problem(after.post("/v1/devices/enroll", json={**body, "previous_token": stranger}), 409)
    r = after.post("/v1/devices/enroll", json={**body, "previous_token": old})
    assert r.status_code == 201, r.text
    assert poll(after, r.json()["token"]).status_code == 204
    device = after.get("/v1/devices/cam-1", headers=ADMIN).json()
    assert device["installed_version"] == 1 and device["labels"] == {"site": "north"}
    assert len(after.get("/v1/devices", headers=ADMIN).json()["items"]) == 2  # no new row
    assert 'ota_device_tokens_issued_total{how="re_enrolled"} 1.0' in after.get("/metrics").text


def test_a_deleted_devices_token_cannot_renew_or_prove_anything(env: Env) -> None:
    client = env.client()
    token = enroll(client, "cam-1")
    assert client.delete("/v1/devices/cam-1", headers=ADMIN).status_code == 204
    assert_problem(client.post("/v1/device/token", headers=bearer(token)), 401)
    enroll(client, "cam-1")  # enrolls anew (a new row, a new token id) ...
    body = {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "device_id": "cam-1", "previous_token": token}
    assert_problem(client.post("/v1/devices/enroll", json=body), 409)  # ... which the old token does not prove
