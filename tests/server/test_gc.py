"""Storage lifecycle: `ota-server gc` deletes what nothing can need again, and nothing else.

The fleet: devices on v1 (revoked since, still running) and v3 (the baseline; one of them came
from v1), an active staged rollout of v4, v2 superseded, v5 revoked, v6 published but not rolled
out — and v6 signs v5's very weights, so they share blobs (content addressing). Deltas between
them exist. What stays and what goes is checked by listing the store itself (the directory, or the
bucket through its own S3 API), on every database × storage pair.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from server.db.models import Delta, Model, ModelVersion
from server.storage import open_storage
from tests.support import wait_for

from . import helpers
from .conftest import ADMIN, Env, assert_problem, bearer, closed_port, download, enroll, publish, release

PAIRS = [(1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4), (3, 5), (4, 5), (4, 6), (5, 6), (1, 6), (3, 6)]


def stored(env: Env) -> set[str]:
    """The blobs in the store, listed by the store's own means (not by the server's code)."""
    if env.storage == "file":
        root = Path(env.storage_url.removeprefix("file://"))
        return {p.name for p in root.glob("??/*") if not p.name.startswith(".")}
    bucket, _, prefix = env.storage_url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=env.s3_endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {obj["Key"].rsplit("/", 1)[1] for page in pages for obj in page.get("Contents", ())}


@pytest.fixture()
def gc(cli: Callable[..., tuple[int, str, str]]) -> Callable[..., Any]:
    """`gc(*args)`: `ota-server gc ARGS --json` with this env's configuration, which must succeed; its JSON."""

    def run(*args: str) -> Any:
        rc, out, err = cli("gc", *args, "--json")
        assert rc == 0, err
        return json.loads(out)

    return run


def released(env: Env, client: TestClient, *versions: int) -> None:
    """Publish and roll out each version in turn: the last one is the baseline."""
    for version in versions:
        release(client, env.artifact(version))


def rows(env: Env) -> tuple[dict[int, ModelVersion], list[Delta]]:
    engine = create_engine(env.database_url)
    try:
        with engine.connect() as conn:
            versions = {
                r.version: r for r in conn.execute(select(ModelVersion).join(Model).where(Model.name == helpers.MODEL))
            }
            deltas = list(conn.execute(select(Delta)))
    finally:
        engine.dispose()
    return versions, deltas  # type: ignore[return-value]


def build_fleet(env: Env, client: TestClient) -> dict[str, str]:
    released(env, client, 1, 2, 3)  # baseline v3: v2 is superseded
    tokens = {name: enroll(client, name) for name in ("d1", "d2", "d3", "d4")}
    for name, versions in {"d1": [1], "d2": [1], "d3": [1, 3], "d4": [3]}.items():
        for v in versions:
            r = client.post(
                "/v1/device/events", json=[{"type": "installed", "version": v}], headers=bearer(tokens[name])
            )
            assert r.status_code == 200, r.text
    publish(client, env.artifact(4))
    staged = {
        "model": helpers.MODEL,
        "version": 4,
        "stages": [{"percent": 50, "soak_seconds": 3600}, {"percent": 100, "soak_seconds": 0}],
        "min_devices": 100,
    }
    r = client.post("/v1/rollouts", json=staged, headers=ADMIN)
    assert r.status_code == 201 and r.json()["state"] == "running", r.text
    publish(client, env.artifact(5))
    publish(client, env.artifact(6, onnx_bytes=helpers.tiny_classifier(0, version_tweak=5)))  # v5's weights
    for v in (1, 5):
        r = client.post(f"/v1/models/{helpers.MODEL}/versions/{v}/revoke", json={"reason": "bad"}, headers=ADMIN)
        assert r.status_code == 200, r.text
    services = client.app.state.services  # type: ignore[attr-defined]
    model_id = services.view.refresh().heads[helpers.MODEL].model_id
    wait_for(
        lambda: all(services.deltas.lookup(model_id, f, t) is not None for f, t in PAIRS),
        what="the deltas between the versions",
    )
    return tokens


def test_gc_deletes_only_what_no_device_rollout_or_baseline_can_need(
    env: Env, client: TestClient, gc: Callable[..., Any]
) -> None:
    tokens = build_fleet(env, client)
    orphan = open_storage(env.settings()).put(b"left behind by a publish that died before its row")
    versions, deltas = rows(env)
    kept_versions = {1, 3, 4, 6}
    keep = {sha for v in kept_versions for sha in (versions[v].payload_sha256, versions[v].onnx_sha256)}
    ready = {(d.from_version, d.to_version): d.sha256 for d in deltas if d.status == "ready"}
    assert {(1, 3), (2, 3), (3, 4), (4, 5), (4, 6)} <= ready.keys()  # the tiny fine-tunes' deltas are worth it
    keep |= {sha for (f, t), sha in ready.items() if f in kept_versions and t in kept_versions}
    before = stored(env)
    assert keep < before and orphan in before

    plan = gc("--dry-run", "--grace", "0", "--orphan-age", "0")
    assert stored(env) == before, "a dry run deletes nothing"
    actions = {v["version"]: (v["action"], v["why"]) for v in plan["versions"]}
    assert {v for v, (action, _) in actions.items() if action == "collect"} == {2, 5}
    assert "superseded by baseline v3" in actions[2][1] and "revoked" in actions[5][1]
    assert "installed on 2 devices" in actions[1][1] and "previous slot of 1 device" in actions[1][1]
    assert "baseline" in actions[3][1] and "target of active rollout" in actions[4][1]
    assert "available" in actions[6][1]
    assert {b["sha256"] for b in plan["blobs"]} == before - keep
    assert {b["why"] for b in plan["blobs"] if b["sha256"] == orphan} == {"orphan: no version or delta names it"}

    marked = gc()  # the default grace period: a day
    assert {v["version"] for v in marked["versions"] if v["action"] == "wait"} == {2, 5}
    assert marked["deleted_blobs"] == 0 and stored(env) == before

    young = gc("--dry-run", "--grace", "0")  # the orphan is younger than an hour
    assert {b["sha256"] for b in young["blobs"]} == before - keep - {orphan}
    swept = gc("--grace", "0", "--orphan-age", "0")
    after = stored(env)
    assert after == keep, "exactly what the fleet, the rollout and the baseline need is left"
    assert swept["deleted_blobs"] == len(before - keep)
    assert versions[2].payload_sha256 not in after and ready[(2, 3)] not in after
    assert versions[5].payload_sha256 in after  # collected v5 shares its bytes with v6, which stays
    assert ready[(4, 5)] in after  # the same bytes as the delta 4 → 6

    collected, deltas_after = rows(env)
    assert {v for v, row in collected.items() if row.collected_at is not None} == {2, 5}
    assert {(d.from_version, d.to_version) for d in deltas_after if d.status == "collected"} == {
        (f, t) for f, t in PAIRS if {f, t} & {2, 5}
    }
    detail = client.get(f"/v1/models/{helpers.MODEL}/versions/2", headers=ADMIN).json()
    assert detail["collected_at"] is not None
    problem = assert_problem(
        client.get(f"/v1/blobs/{versions[2].payload_sha256}", headers=ADMIN), 410, "blob-collected"
    )
    assert "payload of shapes v2" in problem["detail"]

    # Every device still gets what it is offered, in full and as a delta.
    deltas_offered = 0
    for name, current in (("d1", 1), ("d4", 3)):
        r = client.get(f"/v1/device/update?current_version={current}", headers=bearer(tokens[name]))
        offer = r.json()
        assert r.status_code == 200 and offer["version"] in (3, 4), r.text
        assert download(client, offer["download"]["url"]).status_code == 200
        if offer["delta"] is not None:
            deltas_offered += 1
            assert download(client, offer["delta"]["url"]).status_code == 200
    assert deltas_offered > 0, "no offer carried a delta: the kept deltas' downloads were never checked"

    again = gc("--grace", "0")
    assert again["deleted_blobs"] == 0 and stored(env) == keep


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
def test_a_device_reporting_a_marked_version_takes_it_back_from_the_gc(
    env: Env, client: TestClient, gc: Callable[..., Any]
) -> None:
    released(env, client, 1, 2)
    marked = gc()
    assert [v["action"] for v in marked["versions"]] == ["wait", "keep"]
    token = enroll(client, "late")
    client.post("/v1/device/events", json=[{"type": "installed", "version": 1}], headers=bearer(token))
    back = gc("--grace", "0")
    assert [v["action"] for v in back["versions"]] == ["keep", "keep"] and back["deleted_blobs"] == 0
    client.post("/v1/device/events", json=[{"type": "installed", "version": 2}], headers=bearer(token))
    slot = gc("--grace", "0")
    assert slot["versions"][0] == {
        "model": "shapes",
        "version": 1,
        "action": "keep",
        "why": "previous slot of 1 device",
    }
    assert client.get("/v1/devices/late", headers=ADMIN).json()["previous_version"] == 1


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
def test_gc_refuses_to_run_twice_at_once_and_says_why(
    env: Env, client: TestClient, cli: Callable[..., tuple[int, str, str]]
) -> None:
    from server.core.gc import Maintenance
    from server.db.session import Database

    db = Database(env.database_url)
    try:
        with Maintenance(db).lease():
            rc, out, err = cli("gc")
            assert rc == 4 and out == ""
            assert err.startswith("ota-server: error: another gc is running (") and err.count("\n") == 1
            rc, _, _ = cli("gc", "--dry-run")  # a dry run takes no lease
            assert rc == 0
    finally:
        db.dispose()
    rc, out, _ = cli("gc")
    assert rc == 0 and "deleted 0 events older than 30 days" in out


@pytest.mark.parametrize("env", ["sqlite-s3"], indirect=True)
def test_republishing_collected_weights_brings_their_blobs_back(
    env: Env, client: TestClient, gc: Callable[..., Any]
) -> None:
    released(env, client, 1, 2)
    swept = gc("--grace", "0")
    assert [v["action"] for v in swept["versions"]] == ["collect", "keep"]
    old = client.get(f"/v1/models/{helpers.MODEL}/versions/1", headers=ADMIN).json()["payload"]["sha256"]
    assert_problem(client.get(f"/v1/blobs/{old}", headers=ADMIN), 410, "blob-collected")
    # Rolling back is rolling forward: v3 signs v1's weights again, so its payload has v1's digest.
    v3 = publish(client, env.artifact(3, onnx_bytes=helpers.tiny_classifier(0, version_tweak=1)))
    assert v3["payload"]["sha256"] == old
    assert client.get(f"/v1/blobs/{old}", headers=ADMIN).status_code == 200
    again = gc("--grace", "0")
    assert again["deleted_blobs"] == 0 and old in stored(env)


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
def test_gc_with_unreachable_storage_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, cli: Callable[..., tuple[int, str, str]]
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with closed_port() as port:
        for args in (("gc", "--dry-run"), ("gc",)):
            rc, out, err = cli(*args, storage_url="s3://gone/x", s3_endpoint_url=f"http://127.0.0.1:{port}")
            assert (rc, out) == (3, "")
            assert err == "ota-server: error: object storage failed to list blobs (EndpointConnectionError)\n"


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
@pytest.mark.parametrize(
    "args", [("--grace", str(10**15)), ("--orphan-age", str(10**12)), ("--retention-days", str(10**6))]
)
def test_gc_periods_beyond_any_date_are_usage_errors(
    cli: Callable[..., Any], capsys: pytest.CaptureFixture[str], args: tuple[str, str]
) -> None:
    """Not an OverflowError's traceback from `now - grace`: argparse's one line, exit 2."""
    with pytest.raises(SystemExit) as exit_:
        cli("gc", "--dry-run", *args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{args[0]}: must be from " in err and "Traceback" not in err


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
def test_a_grace_period_beyond_any_date_is_a_configuration_error(cli: Callable[..., Any]) -> None:
    rc, out, err = cli("gc", "--dry-run", gc_grace_seconds=10**15)
    assert (rc, out) == (2, "")
    assert err.startswith("ota-server: error: ") and "gc_grace_seconds" in err and err.count("\n") == 1
