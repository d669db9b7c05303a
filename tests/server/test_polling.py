"""Update polling: the right version, exactly the signed bytes, cheap when nothing changed."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

import artifact as A
from tests.support import wait_for

from .conftest import ADMIN, Env, assert_problem, bearer, download, enroll, release


def poll(client: TestClient, token: str, current: int | None = None, **headers: str):  # type: ignore[no-untyped-def]
    url = "/v1/device/update" if current is None else f"/v1/device/update?current_version={current}"
    return client.get(url, headers={**bearer(token), **headers})


def test_nothing_published_is_204_with_poll_interval(client: TestClient) -> None:
    token = enroll(client, "dev-1")
    r = poll(client, token, 0)
    assert r.status_code == 204 and r.content == b""
    interval = int(r.headers["ota-poll-interval"])
    assert 270 <= interval <= 330  # OTA_POLL_INTERVAL 300 ± 10 % per device


def test_offer_carries_exactly_the_signed_manifest(env: Env, client: TestClient, signing_key: A.SigningKey) -> None:
    data = env.artifact(1)
    release(client, data)
    token = enroll(client, "dev-1")
    r = poll(client, token, 0)
    assert r.status_code == 200
    offer = r.json()
    parts = A.read_artifact(data)
    assert offer["model"] == "shapes" and offer["version"] == 1
    assert base64.b64decode(offer["manifest_b64"]) == parts.manifest_bytes
    assert A.canonical_json(offer["manifest"]) == parts.manifest_bytes  # the object re-encodes to the signed bytes
    verified = A.verify_manifest(
        base64.b64decode(offer["manifest_b64"]),
        offer["signatures"],
        trust=A.TrustPolicy.of([signing_key.verify_key]),
        expected_model="shapes",
        installed_version=0,
    )
    assert offer["download"]["sha256"] == verified.manifest.payload.sha256
    assert offer["download"]["length"] == verified.manifest.payload.length
    assert offer["delta"] is None
    assert offer["poll_interval"] == int(r.headers["ota-poll-interval"])
    blob = download(client, offer["download"]["url"])  # a signed URL: no Authorization header needed
    assert blob.status_code == 200
    assert (
        A.read_verified(
            [blob.content], length=offer["download"]["length"], sha256=offer["download"]["sha256"], what="payload"
        )
        == parts.payload
    )


def test_current_device_gets_204(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    token = enroll(client, "dev-1")
    assert poll(client, token, 1).status_code == 204
    assert poll(client, token, 5).status_code == 204  # a device ahead of the registry is never moved back


def test_device_gets_only_its_own_model(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1, model="other"), model="other")
    token = enroll(client, "dev-1", model="shapes")
    assert poll(client, token, 0).status_code == 204
    release(client, env.artifact(1))
    assert poll(client, token, 0).json()["model"] == "shapes"


def test_unchanged_offer_is_304_with_if_none_match(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    token = enroll(client, "dev-1")
    first = poll(client, token, 0)
    etag = first.headers["etag"]
    again = poll(client, token, 0, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    release(client, env.artifact(2))
    changed = poll(client, token, 0, **{"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    assert changed.headers["etag"] != etag


def test_poll_without_current_version_uses_the_reported_one(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    token = enroll(client, "dev-1")
    assert poll(client, token).json()["version"] == 1  # nothing reported yet: offered
    client.post("/v1/device/events", json=[{"type": "installed", "version": 1}], headers=bearer(token))
    assert poll(client, token).status_code == 204


def test_revoked_version_is_never_offered_again(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    release(client, env.artifact(2))
    token = enroll(client, "dev-1")
    assert poll(client, token, 0).json()["version"] == 2
    r = client.post("/v1/models/shapes/versions/2/revoke", json={"reason": "accuracy regression"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert r.json()["revoked_reason"] == "accuracy regression"
    # A revoked baseline offers nothing, not the version before it: a new rollout moves the fleet on.
    assert poll(client, token, 0).status_code == 204
    assert poll(client, token, 1).status_code == 204
    assert client.post("/v1/models/shapes/versions/2/revoke", headers=ADMIN).json()["revoked_reason"] == (
        "accuracy regression"
    )
    assert [m["offered_version"] for m in client.get("/v1/models", headers=ADMIN).json()] == [None]


def test_revocation_reaches_every_server_process_before_revoke_returns(env: Env) -> None:
    a, b = env.client(cache_seconds=0.2), env.client(cache_seconds=0.2)
    release(a, env.artifact(1))
    release(a, env.artifact(2))
    token = enroll(a, "dev-1")
    wait_for(lambda: poll(b, token, 1).status_code == 200, what="the second process to see version 2")
    assert a.post("/v1/models/shapes/versions/2/revoke", headers=ADMIN).status_code == 200
    assert poll(b, token, 1).status_code == 204  # b never wrote anything, yet no longer offers 2


def test_poll_interval_is_stable_per_device_and_spread_across_the_fleet(env: Env) -> None:
    client = env.client(poll_interval=60)
    intervals = {}
    for i in range(20):
        token = enroll(client, f"dev-{i}")
        intervals[i] = int(poll(client, token, 0).headers["ota-poll-interval"])
        assert int(poll(client, token, 0).headers["ota-poll-interval"]) == intervals[i]
    assert all(54 <= v <= 66 for v in intervals.values())
    assert len(set(intervals.values())) > 3


def test_poll_marks_the_device_seen(env: Env, client: TestClient) -> None:
    token = enroll(client, "dev-1")
    assert client.get("/v1/devices/dev-1", headers=ADMIN).json()["last_seen_at"] is None
    poll(client, token, 0)
    wait_for(lambda: client.get("/v1/devices/dev-1", headers=ADMIN).json()["last_seen_at"], what="last_seen_at")


def test_bad_current_version_is_422(client: TestClient) -> None:
    token = enroll(client, "dev-1")
    for bad in ("-1", "x", str(2**40)):
        assert_problem(client.get(f"/v1/device/update?current_version={bad}", headers=bearer(token)), 422)
