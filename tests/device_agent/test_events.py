"""Reports reach the server eventually: queued on disk while it is unreachable, nothing lost, backoff between tries."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from device_agent.events import EventQueue
from device_agent.policy import Backoff
from device_agent.protocol import make_event

from .conftest import AgentThread, wait_until
from .fakeserver import FakeServer
from .models import Release, png_bytes


def _queued(model_dir: Path) -> list[dict[str, object]]:
    path = model_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_events_queued_while_server_unreachable_survive_restart_and_arrive_later(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    wait_until(lambda: server.events_of("installed", 1))
    first.stop()
    server.stop()

    offline = run_agent()
    for _ in range(5):
        assert offline.agent.predict(png_bytes())["version"] == 1  # serving goes on without the server
    model_dir = offline.agent.config.model_dir
    wait_until(lambda: any(e["type"] == "metrics" for e in _queued(model_dir)), what="metrics queued on disk")
    status = offline.agent.status()
    assert status["last_error"]["reason"] == "network" and status["events_queued"] >= 1
    offline.stop()
    assert [e["metrics"]["requests"] for e in _queued(model_dir) if e["type"] == "metrics"] == [5]

    server.start()  # same port: the server is back
    run_agent()
    metrics = wait_until(lambda: server.events_of("metrics"), what="queued metrics delivered")
    m = metrics[0]["metrics"]
    assert m["requests"] == 5 and metrics[0]["version"] == 1
    assert 0 < m["p50_ms"] <= m["p95_ms"] and 0 < m["mean_confidence"] <= 1
    wait_until(lambda: _queued(model_dir) == [], what="the queue to empty")


def test_unreachable_server_is_retried_with_growing_delays_not_hammered(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    first.stop()
    server.stop()
    agent = run_agent(backoff_base=0.05, backoff_max=0.4)
    time.sleep(1.5)
    device = agent.agent.device
    assert device is not None
    # base 0.05 s doubling to a 0.4 s cap: about 6 tries in 1.5 s; retrying at once would make hundreds
    assert 3 <= device.retries <= 12, device.retries
    assert agent.version == 1


def test_backoff_is_exponential_jittered_capped_and_honours_retry_after() -> None:
    backoff = Backoff(1.0, 60.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(9)]
    for n, d in enumerate(delays):
        window = min(60.0, 2.0**n)
        assert window / 2 <= d <= window
    assert len({round(d, 6) for d in delays[6:]}) == 3  # jittered even at the cap
    assert backoff.next_delay(retry_after=50.0) >= 50.0
    backoff.reset()
    assert backoff.next_delay() <= 1.0
    assert Backoff(1.0, 60.0).next_delay(slow=True) >= 30.0


def test_server_errors_on_events_keep_them_queued_until_accepted(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.events_status = 503
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    model_dir = agent.agent.config.model_dir
    wait_until(lambda: [e["type"] for e in _queued(model_dir)][-1:] == ["installed"], what="installed queued")
    server.events_status = None
    wait_until(lambda: server.events_of("installed", 1), what="delivery after the server recovers")
    assert [e["type"] for e in server.events] == ["checking", "downloading", "verified", "installed"]


def test_event_the_server_refuses_is_set_aside_and_does_not_block_the_queue(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.reject_types = {"verified"}
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    wait_until(lambda: server.events_of("installed", 1), what="events after the refused one")
    assert [e["type"] for e in server.events] == ["checking", "downloading", "installed"]
    rejected = (agent.agent.config.model_dir / "events.rejected.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"]["type"] for line in rejected] == ["verified"]


def test_torn_last_line_after_a_crash_does_not_swallow_the_next_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(json.dumps(make_event("checking", 2)).encode() + b'\n{"type": "downlo')
    queue = EventQueue(path)
    queue.put(make_event("failed", 2, reason="hash_mismatch"))
    assert [e["type"] for e in EventQueue(path).snapshot()] == ["checking", "failed"]


def test_metrics_are_shed_first_when_a_long_outage_fills_the_queue(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "events.jsonl", durable=False, cap=10)
    queue.put(make_event("failed", 3, reason="expired"))
    for i in range(20):
        queue.put(make_event("metrics", 2, requests=i))
    kept = EventQueue(tmp_path / "events.jsonl").snapshot()
    assert len(kept) == 10 and kept[0]["type"] == "failed"
    assert [e["requests"] for e in kept[1:]] == list(range(11, 20))


@pytest.mark.parametrize("event_type", ["checking", "metrics"])
def test_events_carry_an_rfc3339_utc_timestamp(event_type: str) -> None:
    event = make_event(event_type, 1)
    assert event["at"].endswith("Z") and "T" in event["at"]


def test_server_with_a_strict_event_schema_still_learns_every_install_and_failure(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.strict_events = True
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    installed = wait_until(lambda: server.events_of("installed", 1), what="installed event without extras")
    assert set(installed[0]) == {"type", "version", "at", "device_id"}
    assert [e["type"] for e in server.events] == ["checking", "downloading", "verified", "installed"]
    assert not (agent.agent.config.model_dir / "events.rejected.jsonl").exists()
