"""Event retention: old device events go in bounded batches, their metrics stay as per-device summaries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, update

from server.core.gc import Maintenance
from server.core.retention import EventRetention
from server.db.models import DeviceEvent
from server.db.session import Database, utcnow

from .conftest import ADMIN, Env, bearer, enroll, release


def metrics(version: int, p50: float, requests: int) -> dict[str, object]:
    window = {"p50_ms": p50, "p95_ms": 2 * p50, "mean_confidence": 0.9, "requests": requests}
    return {"type": "metrics", "version": version, "metrics": window}


def age_every_event(env: Env, days: int) -> int:
    engine = create_engine(env.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(DeviceEvent).values(received_at=utcnow() - timedelta(days=days)))
            return int(conn.execute(select(func.count()).select_from(DeviceEvent)).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)
def test_old_events_are_deleted_in_batches_and_their_metrics_summarised(
    env: Env, client: TestClient, cli: Callable[..., tuple[int, str, str]]
) -> None:
    release(client, env.artifact(1))
    cam, kiosk = enroll(client, "cam"), enroll(client, "kiosk")
    old_cam = [{"type": "installed", "version": 1}] + [metrics(1, p50, 10 * p50) for p50 in (1, 2, 3, 4, 5)]
    for token, body in ((cam, [*old_cam, {"type": "checking"}]), (kiosk, [metrics(1, 7, 4)] * 3)):
        r = client.post("/v1/device/events", json=body, headers=bearer(token))
        assert r.status_code == 200, r.text
    old = age_every_event(env, days=40)
    assert old == 10
    recent = [metrics(1, 9, 100), {"type": "checking"}]
    assert client.post("/v1/device/events", json=recent, headers=bearer(cam)).status_code == 200

    rc, out, _ = cli("gc", "--dry-run")
    assert rc == 0 and "would delete 10 events older than 30 days" in out

    db = Database(env.database_url)
    try:
        maintenance = Maintenance(db)
        retention = EventRetention(db, maintenance, days=30, batch=4)
        lines: list[str] = []
        with maintenance.lease():
            result = retention.prune(progress=lines.append)
            assert (result.deleted, result.summarised, result.remaining) == (10, 8, 2)
            assert len(lines) == 3, "ten old events in batches of at most four"
            again = retention.prune()  # nothing left to fold twice
            assert (again.deleted, again.summarised, again.remaining) == (0, 0, 2)
    finally:
        db.dispose()

    cam_view = client.get("/v1/devices/cam", headers=ADMIN).json()
    assert [e["type"] for e in cam_view["recent_events"]] == ["checking", "metrics"]
    (summary,) = cam_view["metric_history"]
    requests = sum(10 * p50 for p50 in (1, 2, 3, 4, 5))
    assert (summary["version"], summary["windows"], summary["requests"]) == (1, 5, requests)
    assert summary["p50_ms"] == pytest.approx(sum(10 * p50 * p50 for p50 in (1, 2, 3, 4, 5)) / requests)
    assert summary["p95_ms"] == pytest.approx(2 * summary["p50_ms"])
    assert summary["mean_confidence"] == pytest.approx(0.9)
    kiosk_view = client.get("/v1/devices/kiosk", headers=ADMIN).json()
    assert kiosk_view["recent_events"] == []
    assert [(s["windows"], s["requests"], s["p50_ms"]) for s in kiosk_view["metric_history"]] == [(3, 12, 7.0)]
