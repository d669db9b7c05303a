"""The happy path and its promises: enroll once, install, update over a delta, report every step."""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

import pytest

import artifact as A
from device_agent.slots import SlotStore

from .conftest import AgentThread, wait_until
from .fakeserver import FakeServer
from .models import Release, make_release, png_bytes


def test_first_install_then_delta_update_serves_each_version(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    assert agent.agent.predict(png_bytes(32))["version"] == 1

    server.publish(releases[2])
    agent.wait_version(2)
    answer = agent.agent.predict(png_bytes(32))
    assert answer["version"] == 2 and answer["model"] == "shapes"
    assert answer["label"] in ("circle", "square", "triangle") and 0 < answer["score"] <= 1
    assert answer["top_k"][0]["label"] == answer["label"]

    wait_until(lambda: server.events_of("installed", 2), what="installed event for v2")
    types = [e["type"] for e in server.events if e.get("version") == 2 and e["type"] != "metrics"]
    assert types == ["checking", "downloading", "verified", "installed"]
    assert server.events_of("downloading", 2)[0]["source"] == "delta"
    assert server.events_of("installed", 2)[0]["source"] == "delta"
    install = agent.agent.status()["last_install"]
    assert install["version"] == 2 and install["verified_to_serving_ms"] > 0


def test_token_is_kept_private_and_enrollment_happens_once(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent(device_id="kiosk-7", labels={"site": "lab"})
    agent.wait_version(1)
    agent.stop()
    creds = agent.agent.config.model_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert server.enrollments == [
        {"enrollment_secret": "enroll-me", "model": "shapes", "device_id": "kiosk-7", "labels": {"site": "lab"}}
    ]

    again = run_agent()
    assert again.version == 1  # served from the slot before the server is even asked
    wait_until(lambda: len([r for r in server.requests if r[1].startswith("/v1/device/update")]) > 3)
    assert len(server.enrollments) == 1
    assert again.agent.status()["device_id"] == "kiosk-7"


def test_new_model_goes_to_the_inactive_slot_and_the_pointer_moves(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    slots = SlotStore(agent.agent.config.model_dir / "slots")
    first = slots.active()
    server.publish(releases[2])
    agent.wait_version(2)
    assert slots.active() not in (None, first)
    assert slots.version(first or "a") == 1  # the previous model stays as the fallback


def test_server_poll_interval_is_honoured_unless_forced(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.poll_interval = 2.0
    server.publish(releases[1])
    agent = run_agent(force_poll_interval=False, poll_interval=0.01)
    agent.wait_version(1)
    device = agent.agent.device
    assert device is not None
    assert 1.8 <= device.poll_delay() <= 2.2


def test_status_shows_the_download_in_progress_and_forgets_it_once_installed(
    server: FakeServer, key: A.SigningKey, run_agent: Callable[..., AgentThread]
) -> None:
    release = make_release(1, [key], size=64)  # ~130 KB: long enough to be seen mid-download
    server.deltas = False
    server.throttle = 0.05
    server.publish(release)
    agent = run_agent()
    during = wait_until(lambda: (s := agent.agent.status())["download"] and s, what="download progress in the status")
    assert during["target_version"] == 1
    assert during["download"]["source"] == "full" and during["download"]["length"] == len(release.payload)
    assert 0 < during["download"]["received"] <= len(release.payload)

    server.throttle = 0.0
    agent.wait_version(1)
    after = wait_until(lambda: (s := agent.agent.status())["target_version"] is None and s, what="the install's end")
    assert after["download"] is None
    assert after["last_install"]["version"] == 1


def test_one_install_verifies_the_manifest_once(
    server: FakeServer,
    releases: dict[int, Release],
    run_agent: Callable[..., AgentThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking, downloading and verifying share the manifest the door passed when the offer was accepted."""
    checked: list[int] = []
    door = A.verify_manifest

    def counting(manifest_bytes: bytes, *args: Any, **kwargs: Any) -> A.VerifiedManifest:
        verified = door(manifest_bytes, *args, **kwargs)
        checked.append(verified.manifest.version)
        return verified

    monkeypatch.setattr(A, "verify_manifest", counting)
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    server.publish(releases[2])
    agent.wait_version(2)
    assert checked.count(1) == 1 and checked.count(2) == 1, checked
