"""Staged rollouts: who is offered what, how stages are judged, and what operators can do about it.

The controller runs every OTA_ROLLOUT_EVAL_SECONDS in the background; these tests set that
interval to an hour and drive evaluation directly (`evaluate`), so that every verdict happens
exactly when the test says. The two-process test in `test_rollouts_processes.py` runs the loop for real.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.core.services import Services
from server.db.models import DeviceEvent
from server.db.session import utcnow

from .conftest import ADMIN, Env, assert_problem, bearer, enroll, publish, release

pytestmark = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)


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


# -- who is offered what ------------------------------------------------------------------------


def test_publishing_alone_offers_nothing_new(client: TestClient) -> None:
    token = enroll(client, "cam-1")
    assert offered(client, token, 0) == 1  # the baseline
    assert offered(client, token, 1) is None  # v2 is published, but no rollout includes the device


def test_cohorts_follow_the_hash_rule_and_only_grow(client: TestClient) -> None:
    devices = fleet(client, 24)
    r = start(client, stages=[{"percent": 10}, {"percent": 50}, {"percent": 100}], auto_advance=False)
    seen: set[str] = set()
    for stage, percent in enumerate((10, 50, 100)):
        got = {d for d, t in devices.items() if offered(client, t) == 2}
        assert got == {d for d in devices if expected_bucket(r["id"], d) < percent * 100}, stage
        assert seen <= got  # raising the percentage only adds devices
        seen = got
        if stage < 2:
            assert client.post(f"/v1/rollouts/{r['id']}/advance", headers=ADMIN).json()["stage"] == stage + 1
    assert len(seen) == 24


def test_two_server_processes_agree_on_every_device(env: Env, client: TestClient) -> None:
    other = env.client(rollout_eval_seconds=3600)
    devices = fleet(client, 16)
    start(client, stages=[{"percent": 30}, {"percent": 100}])
    services(other).view.refresh()
    answers = {d: offered(client, t) for d, t in devices.items()}
    assert {d: offered(other, t) for d, t in devices.items()} == answers
    assert set(answers.values()) == {None, 2}  # some in the cohort, the rest stay on v1


def test_late_joiners_fall_in_or_out_by_the_same_rule(client: TestClient) -> None:
    r = start(client, stages=[{"percent": 40, "soak_seconds": 3600}, {"percent": 100}])
    late = fleet(client, 12, prefix="late")  # enrolled after the rollout started
    for device_id, token in late.items():
        inside = expected_bucket(r["id"], device_id) < 4000
        assert offered(client, token, None) == (2 if inside else 1), device_id  # new devices run nothing yet
    assert {offered(client, t, None) for t in late.values()} == {1, 2}


def test_devices_of_another_model_or_outside_the_selector_are_never_offered(env: Env, client: TestClient) -> None:
    north = fleet(client, 6, prefix="north", site="north")
    south = fleet(client, 6, prefix="south", site="south")
    others = {f"other-{i}": enroll(client, f"other-{i}", model="other", site="north") for i in range(3)}
    release(client, artifact(env, 1, "other"), model="other")
    r = start(client, selector={"site": "north"}, stages=[{"percent": 100}], min_devices=100)
    assert {offered(client, t) for t in north.values()} == {2}
    assert {offered(client, t) for t in south.values()} == {None}
    assert {offered(client, t, 0) for t in others.values()} == {1}  # their own model's baseline, never shapes v2
    assert evaluate(client) == []  # writes the buffered offers
    (stage,) = get(client, r["id"])["stages"]
    assert stage["cohort"] == 6 and stage["counts"]["offered"] == 6 and stage["counts"]["not_reached"] == 0
    late = enroll(client, "north-late", site="north")
    services(client).view.refresh()  # a labelled late joiner is in once the view has reloaded
    assert offered(client, late) == 2
    assert offered(client, enroll(client, "south-late", site="south")) is None


# -- creating: what is refused ------------------------------------------------------------------


def test_second_active_rollout_of_a_model_is_refused(env: Env, client: TestClient) -> None:
    start(client)
    publish(client, artifact(env, 3))
    doc = assert_problem(
        client.post("/v1/rollouts", json={"model": "shapes", "version": 3}, headers=ADMIN), 409, "rollout-active"
    )
    assert "already has an active rollout" in doc["detail"]
    client.post("/v1/rollouts/2/pause", headers=ADMIN)
    assert_problem(client.post("/v1/rollouts", json={"model": "shapes", "version": 3}, headers=ADMIN), 409)
    client.post("/v1/rollouts/2/abort", headers=ADMIN)
    assert start(client, 3)["state"] == "running"  # once aborted, the model is free again


def test_revoked_version_cannot_be_rolled_out(client: TestClient) -> None:
    assert client.post("/v1/models/shapes/versions/2/revoke", headers=ADMIN).status_code == 200
    doc = assert_problem(
        client.post("/v1/rollouts", json={"model": "shapes", "version": 2}, headers=ADMIN), 409, "version-revoked"
    )
    assert "revoked" in doc["detail"]


def test_revoking_a_running_rollouts_version_aborts_it(client: TestClient) -> None:
    token = enroll(client, "cam-1")
    r = start(client, stages=[{"percent": 100}])
    assert offered(client, token) == 2
    client.post("/v1/models/shapes/versions/2/revoke", headers=ADMIN)
    assert offered(client, token) is None  # never offered once revoked
    assert evaluate(client) == ["aborted"]
    doc = get(client, r["id"])
    assert doc["state"] == "aborted" and doc["reason"] == "version_revoked"


def test_version_at_or_below_the_baseline_is_refused(env: Env, client: TestClient) -> None:
    doc = assert_problem(
        client.post("/v1/rollouts", json={"model": "shapes", "version": 1}, headers=ADMIN),
        409,
        "version-not-above-baseline",
    )
    assert "baseline v1" in doc["detail"]


def test_unknown_model_or_version_is_404(client: TestClient) -> None:
    assert_problem(client.post("/v1/rollouts", json={"model": "nope", "version": 1}, headers=ADMIN), 404)
    assert_problem(client.post("/v1/rollouts", json={"model": "shapes", "version": 9}, headers=ADMIN), 404)
    assert_problem(client.get("/v1/rollouts/99", headers=ADMIN), 404, "rollout-not-found")
    assert_problem(client.post("/v1/rollouts/99/pause", headers=ADMIN), 404, "rollout-not-found")


BAD_BODIES: list[dict[str, Any]] = [
    {"stages": []},
    {"stages": [{"percent": 50}, {"percent": 50}, {"percent": 100}]},
    {"stages": [{"percent": 50}, {"percent": 20}, {"percent": 100}]},
    {"stages": [{"percent": 5}, {"percent": 50}]},
    {"stages": [{"percent": 0}, {"percent": 100}]},
    {"stages": [{"percent": 100, "soak_seconds": -1}]},
    {"success_threshold": 1.5},
    {"failure_threshold": -0.1},
    {"min_devices": -1},
    {"gates": [{"metric": "latency_p95_ratio", "min": 1.5}]},
    {"gates": [{"metric": "latency_p95_ratio", "max": 1.5, "min": 0.5}]},
    {"gates": [{"metric": "confidence_delta", "max": 0.1}]},
    {"gates": [{"metric": "validation_failures"}]},
    {"gates": [{"metric": "accuracy", "min": 0.9}]},
    {"gates": [{"metric": "latency_p95_ratio", "max": 1.5, "min_samples": -1}]},
    {"gates": [{"metric": "validation_failures", "max": 0}, {"metric": "validation_failures", "max": 1}]},
    {"selector": {"bad key!": "x"}},
    {"surprise": True},
]


def test_bad_fields_are_422_and_create_nothing(client: TestClient) -> None:
    for body in BAD_BODIES:
        r = client.post("/v1/rollouts", json={"model": "shapes", "version": 2, **body}, headers=ADMIN)
        assert_problem(r, 422)
    assert client.get("/v1/rollouts?model=shapes&state=running", headers=ADMIN).json() == []


# -- verdicts -----------------------------------------------------------------------------------


def test_halts_on_the_failure_threshold_and_offers_nothing_new(client: TestClient) -> None:
    devices = fleet(client, 20)
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=4, failure_threshold=0.2)
    cohort = [t for t in devices.values() if offered(client, t) == 2]
    assert len(cohort) >= 5
    for t in cohort[:3]:
        report(client, t, {"type": "installed", "version": 2})
    assert evaluate(client) == []  # 3 decided < min_devices 4: not judged yet
    report(client, cohort[3], {"type": "failed", "version": 2, "reason": "hash_mismatch"})
    assert evaluate(client) == ["halted"]  # 1 failed of 4 decided: 25 % > 20 %
    doc = get(client, r["id"])
    assert doc["state"] == "paused" and doc["reason"] == "failure_threshold"
    assert doc["stages"][0]["state"] == "paused"
    assert doc["stages"][0]["counts"] == {
        "offered": len(cohort),
        "installed": 3,
        "failed": 1,
        "device_faults": 0,
        "pending": len(cohort) - 4,
        "not_reached": doc["stages"][0]["cohort"] - len(cohort),
    }
    halted = doc["history"][-1]
    assert halted["event"] == "halted" and halted["by"] == "system" and "1 of 4" in halted["detail"]
    for t in cohort[4:]:
        assert offered(client, t) is None  # devices keep what they have: nothing new
    assert offered(client, cohort[0], 2) is None


def test_a_device_that_rolls_back_after_installing_counts_as_failed(client: TestClient) -> None:
    devices = fleet(client, 4)
    r = start(client, stages=[{"percent": 100}], min_devices=4, failure_threshold=0.2)
    tokens = list(devices.values())
    for t in tokens:
        assert offered(client, t) == 2
        report(client, t, {"type": "installed", "version": 2})
    rollback = {"type": "rolled_back", "version": 1, "from_version": 2, "reason": "signature_invalid"}
    report(client, tokens[0], rollback)  # at its next boot, v2's slot failed the door: back on v1
    assert evaluate(client) == ["halted"]  # 1 of 4 no longer runs v2: 25 % > 20 %
    counts = get(client, r["id"])["stages"][0]["counts"]
    assert (counts["installed"], counts["failed"]) == (3, 1)


def test_install_timeout_counts_as_failure(client: TestClient) -> None:
    devices = fleet(client, 8)
    r = start(client, stages=[{"percent": 100}], min_devices=8, install_timeout_seconds=60)
    for t in devices.values():
        assert offered(client, t) == 2
    for t in list(devices.values())[:6]:
        report(client, t, {"type": "installed", "version": 2})
    assert evaluate(client) == []  # two still pending, within their timeout
    later = utcnow() + timedelta(seconds=61)
    assert evaluate(client, now=later) == ["halted"]
    doc = services(client).rollouts.get(r["id"], now=later)
    assert doc.stages[0].counts.failed == 2 and doc.stages[0].counts.pending == 0
    assert doc.state == "paused" and doc.reason == "failure_threshold"


def test_device_faults_are_counted_apart_and_never_halt_the_rollout(client: TestClient) -> None:
    """A full disk or a read-only model directory says nothing about the version: such `failed`
    reports neither count against the failure threshold nor time out; a later real failure does."""
    devices = fleet(client, 5)
    spec = {"stages": [{"percent": 100, "soak_seconds": 3600}], "min_devices": 5, "failure_threshold": 0.2}
    r = start(client, **spec, install_timeout_seconds=60)
    tokens = list(devices.values())
    for t in tokens:
        assert offered(client, t) == 2
    for t in tokens[:3]:
        report(client, t, {"type": "installed", "version": 2})
    report(client, tokens[3], {"type": "failed", "version": 2, "reason": "no_space", "detail": "disk full"})
    report(client, tokens[4], {"type": "failed", "version": 2, "reason": "read_only"})
    later = utcnow() + timedelta(seconds=61)  # past the install timeout too
    assert evaluate(client, now=later) == []  # 2 of 5 "failed", but none of them for the version
    doc = services(client).rollouts.get(r["id"], now=later)
    counts = doc.stages[0].counts
    assert (counts.installed, counts.failed, counts.device_faults, counts.pending) == (3, 0, 2, 0)
    assert doc.state == "running"
    assert get(client, r["id"])["stages"][0]["counts"]["device_faults"] == 2
    # the disk was freed, and then the version itself was refused: that counts
    report(client, tokens[3], {"type": "failed", "version": 2, "reason": "validation_failed"})
    assert evaluate(client, now=later) == ["halted"]  # 1 failed of 4 decided: 25 % > 20 %
    doc = get(client, r["id"])
    assert doc["reason"] == "failure_threshold"
    assert (doc["stages"][0]["counts"]["failed"], doc["stages"][0]["counts"]["device_faults"]) == (1, 1)


def test_advances_after_soak_and_completes_moving_the_baseline(client: TestClient) -> None:
    devices = fleet(client, 10)
    r = start(client, stages=[{"percent": 30, "soak_seconds": 60}, {"percent": 100}], min_devices=2)
    for t in devices.values():
        if offered(client, t) == 2:
            report(client, t, {"type": "installed", "version": 2})
    assert evaluate(client) == []  # soaking
    assert client.get("/v1/models", headers=ADMIN).json()[0]["offered_version"] == 1
    assert evaluate(client, now=utcnow() + timedelta(seconds=61)) == ["stage_advanced"]
    doc = get(client, r["id"])
    assert doc["stage"] == 1 and doc["stages"][0]["state"] == "passed" and doc["stages"][1]["state"] == "running"
    assert {offered(client, t) for t in devices.values()} == {2}
    assert client.get("/v1/fleet", headers=ADMIN).json()["models"][0]["offered_version"] == 1  # not yet
    for t in devices.values():
        report(client, t, {"type": "installed", "version": 2})
    assert evaluate(client, now=utcnow() + timedelta(seconds=62)) == ["completed"]  # stage 2 began at +61 s
    doc = get(client, r["id"])
    assert doc["state"] == "completed" and doc["stage"] == 1
    assert [h["event"] for h in doc["history"]] == ["created", "stage_advanced", "completed"]
    assert client.get("/v1/fleet", headers=ADMIN).json()["models"][0]["offered_version"] == 2
    assert offered(client, enroll(client, "new-cam"), None) == 2  # the new baseline, for everyone


def test_missing_data_never_advances(client: TestClient) -> None:
    fleet(client, 10)  # enrolled, never poll
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=3)
    assert evaluate(client, now=utcnow() + timedelta(days=1)) == []
    assert get(client, r["id"])["state"] == "running"


def test_auto_advance_off_waits_for_an_operator(client: TestClient) -> None:
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=0, auto_advance=False)
    assert r["state"] == "waiting" and r["stage"] == 0  # empty cohort: stage passed at once, then waits
    assert r["history"][-1]["event"] == "stage_passed"
    doc = client.post(f"/v1/rollouts/{r['id']}/advance", json={"reason": "looks good"}, headers=ADMIN).json()
    assert doc["stage"] == 1 and doc["state"] == "completed"  # the last stage is judged at once: empty too
    assert [h["event"] for h in doc["history"]] == ["created", "stage_passed", "advanced", "completed"]


def test_gate_is_pending_below_min_samples_then_halts_on_latency(client: TestClient) -> None:
    devices = fleet(client, 12)
    gate = {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 100}
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=1, gates=[gate])
    new = [t for t in devices.values() if offered(client, t) == 2]
    old = [t for t in devices.values() if t not in new]
    assert new and old
    (g,) = r["gates"]
    assert g["status"] == "pending" and g["samples"] == 0
    for t in new:
        report(client, t, {"type": "installed", "version": 2})
    report(client, new[0], metrics(2, p95=20.0, requests=60))
    assert evaluate(client) == []
    (g,) = get(client, r["id"])["gates"]
    assert g["status"] == "pending" and g["samples"] == 60 and "60 of 100" in g["detail"]
    report(client, new[-1], metrics(2, p95=20.0, requests=60))
    (g,) = get(client, r["id"])["gates"]
    assert g["status"] == "pending" and "no baseline version metrics" in g["detail"]  # v1 not measured yet
    report(client, old[0], metrics(1, p95=9.0, requests=100))
    report(client, old[-1], metrics(1, p95=11.0, requests=100))
    assert evaluate(client) == ["halted"]
    doc = get(client, r["id"])
    assert doc["state"] == "paused" and doc["reason"] == "gate:latency_p95_ratio"
    (g,) = doc["gates"]
    assert g["status"] == "fail" and g["value"] == pytest.approx(2.0) and g["samples"] == 120


def test_one_very_slow_device_does_not_halt_a_good_version(client: TestClient) -> None:
    devices = fleet(client, 16)
    gate = {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 100}
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=1, gates=[gate])
    new = [t for t in devices.values() if offered(client, t) == 2]
    old = [t for t in devices.values() if t not in new]
    assert len(new) >= 3 and old
    for t in old:
        report(client, t, metrics(1, p95=10.0, requests=50))
    slow, normal = new[0], new[1:]
    for t in new:
        report(client, t, {"type": "installed", "version": 2})
    report(client, slow, metrics(2, p95=120.0, requests=5000))  # an old, busy camera: most of the requests
    for t in normal:
        report(client, t, metrics(2, p95=10.5, requests=50))
    assert evaluate(client) == ["stage_advanced"]  # pooled by requests, p95 would be ~10× the baseline's
    (g,) = get(client, r["id"])["gates"]
    assert g["status"] == "pass" and g["value"] == pytest.approx(1.05)
    assert f"median of {len(new)} devices" in g["detail"]


def test_a_version_slow_on_every_device_halts(client: TestClient) -> None:
    devices = fleet(client, 16)
    gate = {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 100}
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=1, gates=[gate])
    new = [t for t in devices.values() if offered(client, t) == 2]
    before = {t: 8.0 + i % 5 for i, t in enumerate(devices.values())}  # 8–12 ms, as the hardware varies
    for t, p95 in before.items():
        report(client, t, metrics(1, p95=p95, requests=40))
    for t in new:
        report(client, t, {"type": "installed", "version": 2}, metrics(2, p95=2.1 * before[t], requests=40))
    assert evaluate(client) == ["halted"]
    doc = get(client, r["id"])
    assert doc["reason"] == "gate:latency_p95_ratio"
    (g,) = doc["gates"]
    assert g["status"] == "fail" and g["value"] == pytest.approx(2.1)
    assert f"{len(new)} against their own baseline" in g["detail"]


def test_a_metrics_report_that_commits_after_a_later_one_still_counts(client: TestClient) -> None:
    """Event ids are taken at insert, not at commit: on PostgreSQL a report can become visible after
    one with a higher id. The per-device latency reader must not skip it."""
    tokens = fleet(client, 2)
    gate = {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 10}
    r = start(client, stages=[{"percent": 100, "soak_seconds": 3600}], min_devices=1, gates=[gate])
    report(client, tokens["cam-00"], metrics(1, p95=10.0, requests=20))
    report(client, tokens["cam-01"], metrics(2, p95=10.0, requests=20))
    assert get(client, r["id"])["gates"][0]["value"] == pytest.approx(1.0)
    pk = services(client).fleet.get_device("cam-01").device.id
    top = max(e.id for e in services(client).fleet.get_device("cam-01").events)

    def committed(event_id: int, p95: float, requests: int) -> None:
        with services(client).db.session() as session:
            m = {"p50_ms": p95 / 2, "p95_ms": p95, "mean_confidence": 0.9, "requests": requests}
            session.add(DeviceEvent(id=event_id, device_pk=pk, type="metrics", version=2, metrics=m))
            session.commit()

    committed(top + 100, p95=30.0, requests=20)
    assert get(client, r["id"])["gates"][0]["value"] == pytest.approx(2.0)  # (10·20 + 30·20) / 40 ÷ 10
    committed(top + 50, p95=30.0, requests=40)  # a lower id, visible only now
    assert get(client, r["id"])["gates"][0]["value"] == pytest.approx(2.5)  # (200 + 600 + 1200) / 80 ÷ 10


def test_passing_gates_let_the_stage_advance(client: TestClient) -> None:
    devices = fleet(client, 10)
    gates = [
        {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 50},
        {"metric": "confidence_delta", "min": -0.05, "min_samples": 50},
        {"metric": "validation_failures", "max": 0},
    ]
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=1, gates=gates)
    new = [t for t in devices.values() if offered(client, t) == 2]
    old = [t for t in devices.values() if t not in new]
    for t in new:
        report(client, t, {"type": "installed", "version": 2}, metrics(2, p95=10.0, requests=50, confidence=0.88))
    report(client, old[0], metrics(1, p95=10.0, requests=50, confidence=0.9))
    assert evaluate(client) == ["stage_advanced"]
    assert {g["status"] for g in get(client, r["id"])["gates"]} == {"pass"}


def test_a_golden_set_refusal_fails_the_validation_gate(client: TestClient) -> None:
    devices = fleet(client, 10)
    gate = {"metric": "validation_failures", "max": 0}
    r = start(client, stages=[{"percent": 50}, {"percent": 100}], min_devices=100, gates=[gate])
    new = [t for t in devices.values() if offered(client, t) == 2]
    report(client, new[0], {"type": "failed", "version": 2, "reason": "validation_failed", "detail": "top-1 differs"})
    assert evaluate(client) == ["halted"]
    doc = get(client, r["id"])
    assert doc["reason"] == "gate:validation_failures" and doc["gates"][0]["value"] == 1


# -- operators ----------------------------------------------------------------------------------


def test_pause_resume_abort_advance_and_their_409s(env: Env, client: TestClient) -> None:
    token = enroll(client, "cam-1")
    r = start(client, stages=[{"percent": 100}], min_devices=5)
    rid = r["id"]

    def act(action: str, reason: str | None = None) -> Any:
        return client.post(f"/v1/rollouts/{rid}/{action}", json={"reason": reason} if reason else None, headers=ADMIN)

    assert_problem(act("resume"), 409, "rollout-transition-refused")  # running, not paused
    assert act("pause", "investigating a report").json()["state"] == "paused"
    assert offered(client, token) is None  # paused: nothing new
    doc = assert_problem(act("pause"), 409, "rollout-transition-refused")
    assert "already paused" in doc["detail"]
    assert act("resume").json()["state"] == "running"
    assert offered(client, token) == 2
    assert act("advance", "enough canaries").json()["state"] == "completed"  # advance at the last stage
    assert "completed" in assert_problem(act("advance"), 409)["detail"]
    assert_problem(act("abort"), 409)
    assert_problem(act("pause"), 409)

    publish(client, artifact(env, 3))
    r3 = start(client, 3)
    assert (
        client.post(f"/v1/rollouts/{r3['id']}/abort", json={"reason": "wrong build"}, headers=ADMIN).json()["reason"]
        == "wrong build"
    )
    doc = assert_problem(client.post(f"/v1/rollouts/{r3['id']}/resume", headers=ADMIN), 409)
    assert "aborted" in doc["detail"]
    assert offered(client, token, 2) is None  # aborted: devices keep what they have


def test_history_records_every_transition_with_who_and_why(client: TestClient) -> None:
    enroll(client, "cam-1")  # a cohort that has not decided: nothing completes by itself
    r = start(client, stages=[{"percent": 10, "soak_seconds": 3600}, {"percent": 100}], min_devices=5)
    rid = r["id"]
    client.post(f"/v1/rollouts/{rid}/pause", json={"reason": "night freeze"}, headers=ADMIN)
    client.post(f"/v1/rollouts/{rid}/resume", headers=ADMIN)
    client.post(f"/v1/rollouts/{rid}/advance", json={"reason": "canaries fine"}, headers=ADMIN)
    client.post(f"/v1/rollouts/{rid}/abort", json={"reason": "changed our minds"}, headers=ADMIN)
    history = get(client, rid)["history"]
    assert [(h["event"], h["by"], h["stage"]) for h in history] == [
        ("created", "bootstrap", 0),
        ("paused", "bootstrap", 0),
        ("resumed", "bootstrap", 0),
        ("advanced", "bootstrap", 1),
        ("aborted", "bootstrap", 1),
    ]
    assert "night freeze" in history[1]["detail"] and "canaries fine" in history[3]["detail"]
    assert "changed our minds" in history[4]["detail"]
    listed = client.get("/v1/rollouts?model=shapes&state=aborted", headers=ADMIN).json()
    assert [x["id"] for x in listed] == [rid] and listed[0]["reason"] == "changed our minds"
    text = client.get("/metrics").text
    counted = dict(re.findall(r'^ota_rollout_transitions_total\{event="(\w+)"\} (\S+)$', text, re.M))
    # v1's immediate rollout (the fixture) was created and completed too.
    assert counted == {
        "created": "2.0",
        "completed": "1.0",
        "paused": "1.0",
        "resumed": "1.0",
        "advanced": "1.0",
        "aborted": "1.0",
    }
