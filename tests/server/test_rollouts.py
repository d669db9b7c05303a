"""Staged rollouts: who is offered what, and which rollouts cannot be created.

How stages are judged is in `test_rollouts_verdicts.py`, what operators can do about it in
`test_rollouts_operators.py`; the helpers and the `client` they share are in `rollouts.py`. The
two-process test in `test_rollouts_processes.py` runs the controller's loop for real.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from . import rollouts
from .conftest import ADMIN, Env, assert_problem, enroll, publish, release
from .rollouts import artifact, evaluate, expected_bucket, fleet, get, offered, services, start

client = rollouts.client
pytestmark = rollouts.ON_BOTH_DATABASES


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
