"""`ota-server gc` inside `serve` (``OTA_GC_INTERVAL_SECONDS``): it collects without the command, one
process per interval and never two at once, and a failing dependency stops neither it nor the server.

Apps are started with their lifespan (each one a server process: two of them on one database are
two workers); what is collected is checked by looking at the blob directory itself.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.core.gc import Maintenance
from server.core.housekeeping import Housekeeping
from server.db.session import Database
from server.storage import open_storage
from tests.support import wait_for

from .conftest import Env, closed_port

DATABASES = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)
HOUR = 3600
OLD = 2 * 24 * HOUR  # past the orphan age and the default grace period (a day), whichever is longer


def blob_path(env: Env, sha: str) -> Path:
    return Path(env.storage_url.removeprefix("file://")) / sha[:2] / sha


def orphan(env: Env, data: bytes, *, age: float) -> str:
    """A blob no version or delta names, written `age` seconds ago (a publish that died before its row)."""
    sha = open_storage(env.settings()).put(data)
    then = time.time() - age
    os.utime(blob_path(env, sha), (then, then))
    return sha


def housekeeping(client: TestClient) -> Housekeeping:
    found: Housekeeping | None = client.app.state.services.housekeeping  # type: ignore[attr-defined]
    assert found is not None
    return found


def gc_lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ota.gc" and r.getMessage().startswith(start)]


@DATABASES
def test_server_collects_an_old_orphan_blob_without_the_command(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ota.gc")
    old = orphan(env, b"left behind two days ago by a publish that died", age=OLD)
    young = orphan(env, b"written a moment ago by a publish still running", age=0)
    off = env.client()  # the default: no collection inside the server
    assert off.app.state.services.housekeeping is None  # type: ignore[attr-defined]
    assert blob_path(env, old).exists()

    env.client(gc_interval_seconds=HOUR)
    [line] = wait_for(lambda: gc_lines(caplog, "gc: collected"), what="the server's first gc run")
    assert "deleted 1 blobs" in line and "collected 0 versions and 0 deltas" in line and "deleted 0 events" in line
    assert not blob_path(env, old).exists()
    assert blob_path(env, young).exists()  # younger than the orphan age: a publish may be about to name it


@DATABASES
def test_two_workers_collect_once_per_interval(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ota.gc")
    old = orphan(env, b"an orphan for the first interval", age=OLD)
    first = housekeeping(env.client(gc_interval_seconds=HOUR))
    second = housekeeping(env.client(gc_interval_seconds=HOUR))
    wait_for(
        lambda: first.runs + first.skipped == 1 and second.runs + second.skipped == 1,
        what="both workers' first turn",
    )
    assert sorted([first.runs, second.runs]) == [0, 1]
    assert len(gc_lines(caplog, "gc: collected")) == 1 and not blob_path(env, old).exists()

    later = orphan(env, b"an orphan that appears later in the same interval", age=OLD)
    assert first.tick() is None and second.tick() is None  # whichever worker asks again, not this interval
    assert blob_path(env, later).exists() and first.runs + second.runs == 1


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
def test_server_gc_waits_while_the_command_holds_the_gc_lease(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ota.gc")
    old = orphan(env, b"an orphan while `ota-server gc` runs", age=OLD)
    db = Database(env.database_url)
    try:
        with Maintenance(db).lease():  # `ota-server gc` is running
            worker = housekeeping(env.client(gc_interval_seconds=HOUR))
            wait_for(lambda: worker.skipped == 1, what="the worker's turn")
            [line] = gc_lines(caplog, "gc: not this interval")
            assert "another gc is running" in line
            assert worker.runs == 0 and blob_path(env, old).exists()
    finally:
        db.dispose()


@pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
def test_unreachable_storage_is_logged_and_retried_and_the_server_keeps_serving(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ota.gc")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with closed_port() as port:
        client = env.client(
            storage_url="s3://gone/x", s3_endpoint_url=f"http://127.0.0.1:{port}", gc_interval_seconds=1
        )
        wait_for(lambda: len(gc_lines(caplog, "gc failed")) >= 2, what="two failed gc turns")  # the loop goes on
        line = gc_lines(caplog, "gc failed")[0]
        assert line == "gc failed, next try in 1 s: object storage failed to list blobs (EndpointConnectionError)"
        assert client.get("/healthz").status_code == 200
        assert housekeeping(client).runs == 0
