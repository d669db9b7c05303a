"""Enrollment, device events and the fleet views admins read."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, select

from server.db.models import Device

from .conftest import ADMIN, ENROLLMENT_SECRET, Env, assert_problem, bearer, enroll, publish, release


def events(client: TestClient, token: str, *items: dict[str, Any]) -> Any:
    return client.post("/v1/device/events", json=list(items), headers=bearer(token))


def test_enrollment_with_a_wrong_secret_is_refused(client: TestClient) -> None:
    r = client.post("/v1/devices/enroll", json={"enrollment_secret": "wrong", "model": "shapes", "device_id": "d1"})
    assert_problem(r, 403, "enrollment-refused")
    assert client.get("/v1/devices", headers=ADMIN).json()["items"] == []


def test_enrollment_returns_a_token_that_is_not_stored(env: Env, client: TestClient) -> None:
    r = client.post(
        "/v1/devices/enroll",
        json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "device_id": "cam-7", "labels": {"site": "a"}},
    )
    assert r.status_code == 201
    body = r.json()
    assert body["device_id"] == "cam-7" and body["model"] == "shapes" and body["poll_interval"] > 0
    token = body["token"]
    engine = create_engine(env.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(Device.__table__)).one()
    finally:
        engine.dispose()
    assert token not in " ".join(str(v) for v in row)  # the database never holds the credential
    assert client.get("/v1/device/update", headers=bearer(token)).status_code == 204


def test_a_device_deleted_behind_its_tokens_back_is_refused_where_its_record_is_needed(
    env: Env, client: TestClient
) -> None:
    token = enroll(client, "cam-9")
    engine = create_engine(env.database_url)
    try:
        with engine.begin() as conn:  # gone without an admin's DELETE, so its token is not revoked
            conn.execute(delete(Device.__table__).where(Device.__table__.c.device_id == "cam-9"))
    finally:
        engine.dispose()
    body = assert_problem(events(client, token, {"type": "checking"}), 401)
    assert "no longer enrolled" in body["detail"]
    assert_problem(client.get("/v1/device/update", headers=bearer(token)), 401)  # needs its recorded version
    # A poll that says its version is answered from memory, without the database.
    assert client.get("/v1/device/update?current_version=0", headers=bearer(token)).status_code == 204


def test_server_chooses_a_device_id_when_none_is_given(client: TestClient) -> None:
    r = client.post("/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes"})
    assert r.status_code == 201 and r.json()["device_id"].startswith("dev-")


def test_enrolling_an_existing_device_id_is_409_until_an_admin_deletes_it(client: TestClient) -> None:
    first = enroll(client, "cam-1")
    assert client.get("/v1/device/update", headers=bearer(first)).status_code == 204  # verified once, remembered
    r = client.post(
        "/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "device_id": "cam-1"}
    )
    assert_problem(r, 409, "device-exists")
    assert client.delete("/v1/devices/cam-1", headers=ADMIN).status_code == 204
    assert_problem(client.get("/v1/device/update", headers=bearer(first)), 401)  # the old token is dead
    second = enroll(client, "cam-1")
    assert client.get("/v1/device/update", headers=bearer(second)).status_code == 204
    assert_problem(client.get("/v1/device/update", headers=bearer(first)), 401)  # and stays dead
    assert_problem(client.delete("/v1/devices/nope", headers=ADMIN), 404, "device-not-found")


@pytest.mark.parametrize(
    "body",
    [
        {"enrollment_secret": ENROLLMENT_SECRET},
        {"enrollment_secret": ENROLLMENT_SECRET, "model": "Not A Model"},
        {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "device_id": "bad id with spaces"},
        {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "labels": {"bad key!": "x"}},
        {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "labels": {f"k{i}": "v" for i in range(40)}},
        {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "extra": 1},
    ],
)
def test_malformed_enrollment_is_422(client: TestClient, body: dict[str, Any]) -> None:
    doc = assert_problem(client.post("/v1/devices/enroll", json=body), 422, "invalid-request")
    assert doc["errors"]


def test_events_update_status_installed_version_and_metrics(env: Env, client: TestClient) -> None:
    publish(client, env.artifact(1))
    token = enroll(client, "cam-1")
    r = events(
        client,
        token,
        {"type": "checking"},
        {"type": "downloading", "version": 1},
        {"type": "verified", "version": 1},
        {"type": "installed", "version": 1},
        {
            "type": "metrics",
            "version": 1,
            "metrics": {"p50_ms": 3.5, "p95_ms": 9.0, "mean_confidence": 0.91, "requests": 1200},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"recorded": 5, "status": "installed", "installed_version": 1}
    d = client.get("/v1/devices/cam-1", headers=ADMIN).json()
    assert d["status"] == "installed" and d["installed_version"] == 1 and d["last_seen_at"]
    assert d["last_metrics"]["mean_confidence"] == 0.91
    assert [e["type"] for e in d["recent_events"]] == ["metrics", "installed", "verified", "downloading", "checking"]


def test_failure_and_rollback_keep_the_running_version(env: Env, client: TestClient) -> None:
    token = enroll(client, "cam-1")
    events(client, token, {"type": "installed", "version": 1})
    events(client, token, {"type": "failed", "version": 2, "reason": "golden check: top-1 mismatch on case 3"})
    d = client.get("/v1/devices/cam-1", headers=ADMIN).json()
    assert (d["status"], d["installed_version"]) == ("failed", 1)
    assert d["status_reason"] == "golden check: top-1 mismatch on case 3"
    events(client, token, {"type": "rolled_back", "version": 2, "installed_version": 1, "reason": "crash loop"})
    d = client.get("/v1/devices/cam-1", headers=ADMIN).json()
    assert (d["status"], d["installed_version"]) == ("rolled_back", 1)


def test_the_agents_extra_facts_are_kept_with_the_event(client: TestClient) -> None:
    """What the device agent sends beside reason: the human detail, and how it fetched the model."""
    token = enroll(client, "cam-1")
    r = events(
        client,
        token,
        {
            "type": "downloading",
            "version": 2,
            "source": "delta",
            "bytes": 10453,
            "from_version": 1,
            "state": "downloading",
        },
        {"type": "failed", "version": 2, "reason": "hash_mismatch", "detail": "payload sha256 differs " + "x" * 600},
    )
    assert r.status_code == 200 and r.json()["recorded"] == 2
    d = client.get("/v1/devices/cam-1", headers=ADMIN).json()
    failed, downloading = d["recent_events"][:2]
    assert failed["reason"].startswith("hash_mismatch: payload sha256 differs") and len(failed["reason"]) == 500
    assert downloading["metrics"] == {"source": "delta", "bytes": 10453, "from_version": 1, "state": "downloading"}
    bad = events(client, token, {"type": "downloading", "version": 2, "source": "carrier pigeon"})
    assert_problem(bad, 422)


def test_events_also_accept_an_events_envelope(client: TestClient) -> None:
    token = enroll(client, "cam-1")
    r = client.post("/v1/device/events", json={"events": [{"type": "checking"}]}, headers=bearer(token))
    assert r.status_code == 200 and r.json()["recorded"] == 1


@pytest.mark.parametrize(
    "body",
    [
        [],
        [{"type": "failed", "version": 2}],  # a failure needs a reason
        [{"type": "installed"}],  # installed what?
        [{"type": "metrics", "version": 1}],  # metrics without metrics
        [{"type": "rebooted"}],
        [{"type": "metrics", "version": 1, "metrics": {"x": "fast"}}],
        [{"type": "checking"}] * 101,
    ],
)
def test_malformed_events_are_422_and_change_nothing(client: TestClient, body: Any) -> None:
    token = enroll(client, "cam-1")
    assert_problem(client.post("/v1/device/events", json=body, headers=bearer(token)), 422)
    assert client.get("/v1/devices/cam-1", headers=ADMIN).json()["recent_events"] == []


def test_fleet_counts_devices_per_version_and_status(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    release(client, env.artifact(2))
    tokens = [enroll(client, f"cam-{i}") for i in range(5)]
    enroll(client, "other-1", model="other")
    for t in tokens[:3]:
        events(client, t, {"type": "installed", "version": 2})
    events(client, tokens[3], {"type": "installed", "version": 1})
    fleet = client.get("/v1/fleet", headers=ADMIN).json()["models"]
    by_model = {m["model"]: m for m in fleet}
    shapes = by_model["shapes"]
    assert shapes["offered_version"] == 2 and shapes["devices"] == 5
    assert {v["version"]: v["devices"] for v in shapes["versions"]} == {None: 1, 1: 1, 2: 3}
    assert shapes["statuses"] == {"enrolled": 1, "installed": 4}
    assert by_model["other"]["devices"] == 1 and by_model["other"]["offered_version"] is None


def test_device_list_filters_and_pages_through_every_device_once(env: Env, client: TestClient) -> None:
    for i in range(23):
        token = enroll(client, f"cam-{i:02d}", site="north" if i % 3 == 0 else "south", tier="edge")
        if i % 2 == 0:
            events(client, token, {"type": "installed", "version": 1})
    enroll(client, "x-1", model="other", site="north")

    def collect(**params: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            query = {**params, "limit": 5, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/devices", params=query, headers=ADMIN).json()
            assert len(page["items"]) <= 5
            seen += [d["device_id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen

    everything = collect()
    assert len(everything) == 24 and len(set(everything)) == 24
    assert collect(model="shapes") == [f"cam-{i:02d}" for i in range(23)]
    assert collect(model="shapes", version=1) == [f"cam-{i:02d}" for i in range(0, 23, 2)]
    assert collect(status="enrolled", model="shapes") == [f"cam-{i:02d}" for i in range(1, 23, 2)]
    assert collect(label="site:north") == [f"cam-{i:02d}" for i in range(0, 23, 3)] + ["x-1"]
    assert collect(label=["site:north", "tier:edge"]) == [f"cam-{i:02d}" for i in range(0, 23, 3)]
    first = client.get("/v1/devices", params={"limit": 1}, headers=ADMIN).json()["items"][0]
    assert first["labels"] == {"site": "north", "tier": "edge"}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"cursor": "garbage!"}, 400),
        ({"cursor": "ZDotNQ"}, 400),  # "d:-5"
        ({"label": "no-colon"}, 400),
        ({"limit": 0}, 422),
        ({"limit": 100000}, 422),
        ({"status": "sleeping"}, 422),
        ({"model": "BAD"}, 422),
    ],
)
def test_bad_device_list_parameters_are_4xx(client: TestClient, params: dict[str, Any], status: int) -> None:
    assert_problem(client.get("/v1/devices", params=params, headers=ADMIN), status)


def test_unknown_device_is_404(client: TestClient) -> None:
    assert_problem(client.get("/v1/devices/nope", headers=ADMIN), 404, "device-not-found")
