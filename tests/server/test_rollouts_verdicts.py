"""Staged rollouts: how a stage is judged (failure threshold, install timeout, soak, gates) and what
each verdict does to the rollout and to the devices.

The controller is driven by hand (`rollouts.evaluate`), at the time the test says.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from server.db.models import DeviceEvent
from server.db.session import utcnow

from . import rollouts
from .conftest import ADMIN, enroll
from .rollouts import evaluate, fleet, get, metrics, offered, report, services, start

client = rollouts.client
pytestmark = rollouts.ON_BOTH_DATABASES


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
