"""Input a client controls that the databases cannot store: each is a 4xx naming the field, never a 500.

PostgreSQL refuses NUL characters in text and integers past 2⁶³; timestamps must convert to UTC.
The limits live in the API schemas (and the artifact schema for manifests), so SQLite and
PostgreSQL answer the same. Threat → test (issue 12, findings 16, 17 and 26).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

import artifact as A
from tests.support import manifest_fields, tiny_classifier, wait_for

from .conftest import ADMIN, ENROLLMENT_SECRET, IMMEDIATE, Env, assert_problem, bearer, enroll, publish, release

pytestmark = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)
NUL = "bad\u0000value"


def _names(doc: dict[str, Any], field: str) -> None:
    """The problem names the offending field."""
    assert any(field in ".".join(e["loc"]) for e in doc["errors"]), doc
    assert field in doc["detail"], doc


# -- NUL characters -----------------------------------------------------------------------------


def test_nul_in_an_enrollment_label_is_422_naming_the_label(client: TestClient) -> None:
    body = {"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "labels": {"site": NUL}}
    doc = assert_problem(client.post("/v1/devices/enroll", json=body), 422, "invalid-request")
    _names(doc, "site")


@pytest.mark.parametrize("field", ["reason", "detail"])
def test_nul_in_an_event_is_422_and_the_next_events_still_land(client: TestClient, field: str) -> None:
    token = enroll(client, "cam-1")
    bad = {"type": "failed", "version": 1, "reason": "download", field: NUL}
    doc = assert_problem(client.post("/v1/device/events", json=[bad], headers=bearer(token)), 422)
    _names(doc, field)
    r = client.post("/v1/device/events", json=[{"type": "checking"}], headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "checking"


def test_nul_in_a_revoke_reason_is_422_and_the_version_stays_offered(env: Env, client: TestClient) -> None:
    publish(client, env.artifact(1))
    r = client.post("/v1/models/shapes/versions/1/revoke", json={"reason": NUL}, headers=ADMIN)
    _names(assert_problem(r, 422), "reason")
    assert client.get("/v1/models/shapes/versions/1", headers=ADMIN).json()["revoked"] is False


def test_nul_in_a_rollout_selector_or_action_reason_is_422(env: Env, client: TestClient) -> None:
    publish(client, env.artifact(1))
    body = {"model": "shapes", "version": 1, **IMMEDIATE, "selector": {"site": NUL}}
    _names(assert_problem(client.post("/v1/rollouts", json=body, headers=ADMIN), 422), "site")
    body = {"model": "shapes", "version": 1, "stages": [{"percent": 100}], "min_devices": 5}
    rollout = client.post("/v1/rollouts", json=body, headers=ADMIN).json()
    r = client.post(f"/v1/rollouts/{rollout['id']}/pause", json={"reason": NUL}, headers=ADMIN)
    _names(assert_problem(r, 422), "reason")


def test_nul_in_a_device_label_filter_is_422(client: TestClient) -> None:
    doc = assert_problem(client.get("/v1/devices", params={"label": f"site:{NUL}"}, headers=ADMIN), 422)
    _names(doc, "label")


# -- timestamps and integers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "at",
    [
        "2026-01-31T12:00:00",  # no offset: which moment is it?
        "9999-12-31T23:59:59-14:00",  # past year 9999 once in UTC
        "0001-01-01T00:00:00+14:00",  # before year 1 once in UTC
    ],
)
def test_event_time_without_offset_or_outside_utc_is_422(client: TestClient, at: str) -> None:
    token = enroll(client, "cam-1")
    r = client.post("/v1/device/events", json=[{"type": "checking", "at": at}], headers=bearer(token))
    _names(assert_problem(r, 422), "at")


def test_event_time_with_an_offset_is_kept_in_utc(client: TestClient) -> None:
    token = enroll(client, "cam-1")
    r = client.post(
        "/v1/device/events", json=[{"type": "checking", "at": "2026-01-31T12:00:00+02:00"}], headers=bearer(token)
    )
    assert r.status_code == 200, r.text
    event = client.get("/v1/devices/cam-1", headers=ADMIN).json()["recent_events"][0]
    assert event["device_time"].startswith("2026-01-31T10:00:00")


@pytest.mark.parametrize("after", [2**63, 10**40])
def test_device_list_cursor_past_int64_is_400(client: TestClient, after: int) -> None:
    cursor = base64.urlsafe_b64encode(f"d:{after}".encode()).decode().rstrip("=")
    assert_problem(client.get("/v1/devices", params={"cursor": cursor}, headers=ADMIN), 400)


def test_empty_current_version_is_422_not_absent(client: TestClient) -> None:
    token = enroll(client, "cam-1")
    doc = assert_problem(client.get("/v1/device/update?current_version=", headers=bearer(token)), 422)
    _names(doc, "current_version")


# -- manifests the door must refuse before the database sees them -------------------------------


def _signed(env: Env, mutate: Any) -> bytes:
    """An artifact of version 1 whose canonical manifest bytes `mutate` rewrites, then signs."""
    onnx = tiny_classifier(0, version_tweak=1)
    payload = A.encode_payload(onnx)
    manifest = A.build_manifest(**manifest_fields(onnx, payload, version=1, parent_version=None))
    data = mutate(manifest.canonical_bytes())
    return A.artifact_bytes(data, [env.key.sign(data)], payload)


@pytest.mark.parametrize("version", [2**31, 2**63, 10**40])
def test_signed_manifest_version_past_int32_is_422_on_upload(env: Env, client: TestClient, version: int) -> None:
    data = _signed(env, lambda b: b.replace(b'"version":1}', b'"version":%d}' % version))
    doc = assert_problem(client.post("/v1/models/shapes/versions", content=data, headers=ADMIN), 422)
    assert "version" in doc["detail"], doc
    assert client.get("/v1/models", headers=ADMIN).json() == []


def test_signed_manifest_with_a_5000_digit_metric_is_422(env: Env, client: TestClient) -> None:
    data = _signed(env, lambda b: b.replace(b'"params":579', b'"params":' + b"9" * 5000))
    doc = assert_problem(client.post("/v1/models/shapes/versions", content=data, headers=ADMIN), 422)
    assert "metrics" in doc["detail"] or "number" in doc["detail"], doc


# -- memory a single device controls ------------------------------------------------------------


def test_polls_claiming_versions_that_never_existed_queue_no_delta_work(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    release(client, env.artifact(50, parent_version=1))
    token = enroll(client, "cam-1")
    deltas = client.app.state.services.deltas  # type: ignore[attr-defined]
    before = deltas.known_pairs
    for claimed in range(2, 50):  # one device, 48 made-up versions below the offered one
        r = client.get(f"/v1/device/update?current_version={claimed}", headers=bearer(token))
        assert r.status_code == 200, r.text
        assert r.json()["delta"] is None and r.json()["version"] == 50
    assert deltas.known_pairs == before  # nothing queued, nothing remembered for them


def test_the_delta_cache_forgets_the_least_recently_used_pairs(env: Env) -> None:
    from server.core.deltas import DeltaService
    from server.db.session import Database
    from server.observability import Metrics
    from server.storage import open_storage

    settings = env.settings()
    db = Database(settings.database_url)
    service = DeltaService(
        db, open_storage(settings), Metrics(), max_ratio=0.6, workers=1, claim_timeout=60, cache_pairs=4
    )
    try:
        for i in range(40):  # pairs of a model that does not exist: each settles as unknown
            service.request(999, i + 1, i + 2)
        wait_for(lambda: service.known_pairs <= 4, what="the delta cache to settle within its bound")
    finally:
        service.shutdown()
        db.dispose()
