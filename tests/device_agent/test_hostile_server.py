"""A faulty or hostile server cannot brick the device (issue 12, agent findings 8–16).

Each test is named after the threat. Faults are injected at the server (the fake server's hooks:
`answer_hook` sends any status, headers and body; `events_hook` refuses chosen batches; `revoke`
deletes a device), never by patching the agent. In every case the device keeps serving the model
it has, the agent keeps running, and once the fault clears it reaches the offered version.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from device_agent.protocol import MAX_ANSWER_BYTES, parse_offer
from device_agent.state import Job, Persisted, State, StateStore

from .conftest import AgentThread, wait_until
from .fakeserver import Answer, FakeServer
from .models import Release, make_release, png_bytes

UPDATE = "/v1/device/update"
EVENTS = "/v1/device/events"


def _endless(chunk: bytes = b" " * 65536, total: int = 64 << 20) -> Iterator[bytes]:
    for _ in range(total // len(chunk)):
        yield chunk


def _hostile(method: str, path: str, answer: Callable[[], Answer]) -> Callable[[str, str], Answer | None]:
    return lambda m, p: answer() if (m, p) == (method, path) else None


def _still_serving(agent: AgentThread, version: int) -> None:
    assert agent.agent.predict(png_bytes(16))["version"] == version
    assert agent._thread.is_alive() and agent.error is None


# -- finding 8: every answer is capped ------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        lambda: (200, {"Content-Type": "application/json"}, _endless()),  # no Content-Length, never ends
        lambda: (200, {"Content-Length": str(1 << 30)}, _endless()),  # announces 1 GiB
        lambda: (200, {"Content-Encoding": "gzip"}, [gzip.compress(b" " * (32 << 20))]),  # 32 KiB → 32 MiB
        lambda: (200, {}, [b"[" * (MAX_ANSWER_BYTES - 1)]),  # within the cap, nested past any recursion limit
    ],
    ids=["endless-body", "huge-content-length", "gzip-bomb", "deeply-nested-json"],
)
def test_hostile_poll_answer_is_dropped_and_the_device_keeps_serving(
    answer: Callable[[], Answer],
    server: FakeServer,
    releases: dict[int, Release],
    run_agent: Callable[..., AgentThread],
) -> None:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    polls = server.requests_to(UPDATE)
    server.answer_hook = _hostile("GET", UPDATE, answer)
    server.publish(releases[2])
    wait_until(lambda: server.requests_to(UPDATE) >= polls + 3, what="the agent to poll the hostile server again")
    _still_serving(agent, 1)
    assert agent.agent.status()["last_error"]["reason"] == "protocol"
    server.answer_hook = None  # the fault clears: the device gets the update without a restart
    agent.wait_version(2)


def test_hostile_enrollment_answer_is_dropped_and_enrollment_retried(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.answer_hook = _hostile("POST", "/v1/devices/enroll", lambda: (201, {}, _endless()))
    server.publish(releases[1])
    agent = run_agent()
    wait_until(lambda: server.requests_to("/v1/devices/enroll") >= 3, what="enrollment retries")
    assert agent._thread.is_alive() and agent.error is None
    server.answer_hook = None
    agent.wait_version(1)


def test_hostile_events_answer_keeps_the_events_queued_until_it_clears(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.answer_hook = _hostile("POST", EVENTS, lambda: (200, {"Content-Encoding": "deflate"}, _endless()))
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    wait_until(lambda: server.requests_to(EVENTS) >= 2, what="event deliveries")
    assert not server.events and agent.agent.status()["events_queued"] > 0
    server.answer_hook = None
    wait_until(lambda: server.events_of("installed", 1), what="the queued installed event")


# -- finding 9: poll_interval ------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [float("nan"), float("inf"), -1.0, 1e308])
def test_hostile_poll_interval_is_never_taken_or_persisted(
    interval: float, server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.poll_interval = interval  # the fake server writes NaN and Infinity as JSON's NaN/Infinity
    server.publish(releases[1])
    agent = run_agent(force_poll_interval=False, poll_interval=0.05)
    agent.wait_version(1)
    device = agent.agent.device
    assert device is not None
    assert 0.04 <= device.poll_delay() <= 86_400 * 1.1
    saved = json.loads((agent.agent.config.model_dir / "state.json").read_text(), parse_constant=lambda c: c)
    assert saved["poll_interval"] in (None, 86_400.0)


# -- finding 10: transport length faults are transient --------------------------------------------


def test_truncated_transfer_is_retried_not_refused_and_installs_once_the_server_is_whole(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    """A short Content-Length says nothing about the version: no `failed`, no blacklist."""
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    server.deltas = False
    server.publish(releases[2])
    server.blob_override[releases[2].payload_sha] = releases[2].payload[:-100]
    wait_until(lambda: len(server.ranges()) >= 2, what="the agent to retry the short transfer")
    assert not server.events_of("failed")
    assert agent.agent.status()["failed_versions"] == {}
    _still_serving(agent, 1)
    del server.blob_override[releases[2].payload_sha]
    agent.wait_version(2)
    assert not server.events_of("failed")


# -- finding 11: backoff per failing step -----------------------------------------------------------


def test_failing_blob_store_backs_off_although_every_poll_succeeds(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent(backoff_base=0.01, backoff_max=30.0)
    agent.wait_version(1)
    server.deltas = False
    server.publish(releases[2])
    blob = f"/v1/blobs/{releases[2].payload_sha}"
    server.answer_hook = _hostile("GET", blob, lambda: (503, {"Content-Length": "0"}, []))
    wait_until(lambda: server.requests_to(blob) >= 6, what="six failed downloads")
    device = agent.agent.device
    assert device is not None
    # Not reset by the polls in between: the count (and the delay) keeps growing. Waited for, as the
    # server sees the sixth request a moment before the agent counts its failure.
    wait_until(lambda: device.backoff.failures >= 6, what="six failures counted by the backoff")


# -- finding 12: a trickling server, and the server's new word mid-download --------------------------


def test_trickling_download_is_cut_and_resumed_not_waited_on_forever(
    server: FakeServer, key: Any, run_agent: Callable[..., AgentThread]
) -> None:
    release = make_release(1, [key], size=64)
    server.deltas = False
    server.throttle = 0.05
    server.publish(release)
    agent = run_agent(download_min_rate=1e9, download_stall_window=0.2)
    agent.wait_version(1, timeout=60)
    assert len(server.ranges()) >= 1  # cut at least once, then resumed where it stopped
    assert not server.events_of("failed")


@pytest.mark.parametrize("change", ["newer-offer", "withdrawn"])
def test_offer_change_during_a_slow_download_is_acted_on(
    change: str, server: FakeServer, key: Any, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    server.deltas = False
    server.throttle = 0.5
    server.publish(make_release(2, [key], size=64))  # ~130 KB at 16 KB/s: most of 10 s
    wait_until(lambda: agent.agent.status()["download"], what="the slow download to start")
    if change == "newer-offer":
        server.publish(releases[3])
        agent.wait_version(3)
    else:
        server.target = None
        wait_until(lambda: agent.agent.status()["target_version"] is None, what="the withdrawn offer to be dropped")
        _still_serving(agent, 1)
    assert not server.events_of("installed", 2)


# -- finding 13: a delta that is never there ----------------------------------------------------------


def test_delta_that_answers_404_forever_falls_back_to_the_full_payload(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    server.publish(releases[2])
    full = f"/v1/blobs/{releases[2].payload_sha}"

    def hook(method: str, path: str) -> Answer | None:
        if path.startswith("/v1/blobs/") and path != full:
            return 404, {"Content-Length": "0"}, []
        return None

    server.answer_hook = hook
    agent.wait_version(2)
    assert [e["source"] for e in server.events_of("downloading", 2)] == ["delta", "full"]
    assert server.events_of("downloading", 2)[1]["reason"].startswith("delta_unavailable")
    assert not server.events_of("failed")


# -- finding 14: crashes are counted where the update can cause them -----------------------------------


def test_unclean_restarts_while_a_download_progresses_do_not_condemn_the_version(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    first.stop()
    server.publish(releases[2])
    offer = server.offer(1)
    assert offer is not None
    store = StateStore(first.agent.config.model_dir / "state.json")
    job = Job(parse_offer(offer, etag=None), from_version=1)
    store.save(Persisted(state=State.DOWNLOADING, job=job, crashes={"downloading": 10}))
    again = run_agent()  # a power cut during the download, many times over
    again.wait_version(2)
    assert not server.events_of("failed")


# -- finding 15: a revoked token, a clean stop -----------------------------------------------------


def test_revoked_token_re_enrolls_with_the_secret_and_says_so(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent(device_id="cam-7")
    agent.wait_version(1)
    server.revoke("cam-7")  # an admin deleted the device: its token is refused (401) from now on
    server.publish(releases[2])
    agent.wait_version(2)
    said = wait_until(
        lambda: [e for e in server.events_of("checking") if e.get("reason") == "re_enrolled"], what="re_enrolled"
    )
    assert said[0]["device_id"] == "cam-7" and said[0]["installed_version"] == 1
    assert [e["device_id"] for e in server.enrollments] == ["cam-7", "cam-7"]


def test_clean_stop_right_after_install_does_not_resend_installed(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    arrived = threading.Event()

    def slow_installed(batch: list[dict[str, Any]]) -> None:
        if any(e["type"] == "installed" for e in batch):
            arrived.set()
            time.sleep(1.0)  # the agent is stopped while the server holds the request
        return None

    server.events_hook = slow_installed
    server.publish(releases[1])
    agent = run_agent()
    wait_until(arrived.is_set, what="the installed event to reach the server")
    agent.stop()
    server.events_hook = None
    run_agent().wait_version(1)
    time.sleep(0.5)
    assert len(server.events_of("installed", 1)) == 1


# -- finding 16 (agent half): one event the server fails on never blocks the others -----------------


def test_event_the_server_keeps_failing_on_is_set_aside_and_later_events_get_through(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread], make_config: Any
) -> None:
    """A server that answers 500 to any batch holding one event (a NUL in its detail, on PostgreSQL)
    must not stop every later event from being delivered."""
    model_dir = make_config().model_dir
    model_dir.mkdir(parents=True)
    poison = {"type": "failed", "version": 9, "reason": "x", "detail": "nul \u0000 here", "at": "2024-01-01T00:00:00Z"}
    (model_dir / "events.jsonl").write_text(json.dumps(poison) + "\n")
    server.events_hook = lambda batch: 500 if any("\u0000" in str(e.get("detail", "")) for e in batch) else None
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    wait_until(lambda: server.events_of("installed", 1), what="the installed event, behind the poisoned one")
    rejected = model_dir / "events.rejected.jsonl"
    image = png_bytes(16)  # requests served make `metrics` events: later events that do get through
    wait_until(
        lambda: agent.agent.predict(image) and rejected.exists() and rejected.read_text().endswith("\n"),
        what="the poisoned event to be set aside",
    )
    assert json.loads(rejected.read_text().splitlines()[0])["event"]["detail"] == poison["detail"]
    wait_until(lambda: agent.agent.status()["events_queued"] == 0, what="an empty queue")


def test_server_outage_sets_no_event_aside(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    """500 to every batch is an outage, not a bad event: everything stays queued and is delivered later."""
    server.events_status = 500
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    wait_until(lambda: server.requests_to(EVENTS) >= 12, what="several failed deliveries")
    assert not (agent.agent.config.model_dir / "events.rejected.jsonl").exists()
    server.events_status = None
    wait_until(lambda: server.events_of("installed", 1), what="the queued installed event")
