"""Staged rollouts: what operators can do (pause, resume, advance, abort), what is refused, and the
history and metrics that record who did what and why.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from . import rollouts
from .conftest import ADMIN, Env, assert_problem, enroll, publish
from .rollouts import artifact, get, offered, start

client = rollouts.client
pytestmark = rollouts.ON_BOTH_DATABASES


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
