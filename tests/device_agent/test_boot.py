"""At start the agent re-verifies what it serves, falls back to the other slot, and ends crash loops."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import artifact as A
from device_agent.protocol import parse_offer
from device_agent.slots import SlotStore
from device_agent.state import Job, Persisted, State, StateStore

from .conftest import AgentThread, wait_until
from .fakeserver import FakeServer
from .models import Release, golden_cases, make_release, tiny_classifier


def _two_versions_installed(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> Path:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    server.publish(releases[2])
    agent.wait_version(2)
    wait_until(lambda: server.events_of("installed", 2))
    agent.stop()
    return agent.agent.config.model_dir / "slots"


def _flip_byte(path: Path, at: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupted_active_model_rolls_back_to_the_other_slot(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    root = _two_versions_installed(server, releases, run_agent)
    slots = SlotStore(root)
    bad = slots.active()
    _flip_byte(root / f"{bad}.onnx")

    server.target = 1  # hold v2 back, so the fallback is observable and not healed at once
    again = run_agent()
    assert again.version == 1  # serving the fallback
    assert slots.active() != bad
    rolled = wait_until(lambda: server.events_of("rolled_back"), what="rolled_back event")
    assert rolled[0]["version"] == 1 and rolled[0]["from_version"] == 2 and rolled[0]["reason"] == "hash_mismatch"
    server.target = 2
    again.wait_version(2)  # and it heals: the server offers v2 again, into the now inactive slot


def test_tampered_manifest_in_active_slot_rolls_back(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    root = _two_versions_installed(server, releases, run_agent)
    bad = SlotStore(root).active()
    manifest = root / f"{bad}.manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"circle"', b'"bircle"'))
    server.target = None  # no update on offer: the device must fall back on its own
    again = run_agent()
    assert again.version == 1
    assert wait_until(lambda: server.events_of("rolled_back"))[0]["reason"] == "bad_signature"


def test_missing_active_model_file_rolls_back(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    root = _two_versions_installed(server, releases, run_agent)
    (root / f"{SlotStore(root).active()}.onnx").unlink()
    server.target = None
    again = run_agent()
    assert again.version == 1
    assert wait_until(lambda: server.events_of("rolled_back"))[0]["reason"] == "slot_unreadable"


def test_no_valid_slot_serves_nothing_and_installs_afresh(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    root = _two_versions_installed(server, releases, run_agent)
    for slot in "ab":
        _flip_byte(root / f"{slot}.onnx")
    again = run_agent()
    assert again.version is None
    rolled = wait_until(lambda: server.events_of("rolled_back"))
    assert rolled[0]["version"] is None
    again.wait_version(2)
    assert server.events_of("downloading", 2)[-1]["source"] == "full"


def test_model_whose_manifest_expired_after_install_still_boots(
    server: FakeServer, key: A.SigningKey, run_agent: Callable[..., AgentThread]
) -> None:
    """Expiry bounds when an offer may be installed; a device must not go dark when it passes."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    server.publish(make_release(1, [key], expires_at=A.format_time(expires)))
    agent = run_agent()
    agent.wait_version(1)
    agent.stop()
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    server.target = None
    assert run_agent().version == 1


def _job_for(server: FakeServer, current: int) -> Job:
    offer = server.offer(current)
    assert offer is not None
    return Job(parse_offer(offer, etag=None), from_version=current)


def test_crash_loop_in_one_state_fails_the_version_and_keeps_the_old_model(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    first.stop()
    server.publish(releases[2])
    store = StateStore(first.agent.config.model_dir / "state.json")
    store.save(Persisted(state=State.VALIDATING, job=_job_for(server, 1), crashes={"validating": 3}))

    again = run_agent()  # the 4th unclean start in `validating` for v2: the cap is 3
    failed = wait_until(lambda: server.events_of("failed"), what="failed event")
    assert [(e["version"], e["reason"], e["state"]) for e in failed] == [(2, "crash_loop", "validating")]
    time.sleep(0.3)
    assert again.version == 1
    assert store.load().failed == {2: "crash_loop"}


def test_restart_below_the_crash_cap_resumes_the_update(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    first.stop()
    server.publish(releases[2])
    store = StateStore(first.agent.config.model_dir / "state.json")
    store.save(Persisted(state=State.STAGING, job=_job_for(server, 1), crashes={"staging": 1}))
    again = run_agent()
    again.wait_version(2)
    wait_until(lambda: server.events_of("installed", 2))
    assert not server.events_of("failed")
    assert store.load().crashes == {}


def test_clean_shutdown_is_not_counted_as_a_crash(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    first.stop()
    server.publish(releases[2])
    store = StateStore(first.agent.config.model_dir / "state.json")
    store.save(Persisted(state=State.DOWNLOADING, job=_job_for(server, 1), crashes={"downloading": 3}, clean_exit=True))
    run_agent().wait_version(2)
    assert not server.events_of("failed")


def test_unreadable_state_file_starts_from_idle_and_keeps_serving(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    first = run_agent()
    first.wait_version(1)
    first.stop()
    (first.agent.config.model_dir / "state.json").write_text('{"state": "swapping", "job": {"offer": 3')
    again = run_agent()
    assert again.version == 1
    server.publish(releases[2])
    again.wait_version(2)
    wait_until(lambda: server.events_of("installed", 2))
    assert json.loads((first.agent.config.model_dir / "state.json").read_text())["state"] == "idle"


def test_model_that_failed_validation_never_comes_back_as_the_fallback(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, run_agent: Callable[..., AgentThread]
) -> None:
    """v3 fails its golden set after being written to the empty other slot; when the active slot is
    then damaged, the agent must serve nothing rather than the refused v3."""
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    cases = golden_cases(tiny_classifier(3), 8, image_case=True)
    cases[0]["logits"] = [v + 1.0 for v in cases[0]["logits"]]
    server.publish(make_release(3, [key], golden={"tolerance": 1e-4, "cases": cases}))
    wait_until(lambda: server.events_of("failed", 3), what="v3 refused")
    agent.stop()
    root = agent.agent.config.model_dir / "slots"
    slots = SlotStore(root)
    assert slots.version(slots.inactive()) == 3  # the refused model's bytes sit in the other slot …
    _flip_byte(root / f"{slots.active()}.onnx")

    server.target = None
    again = run_agent()
    assert again.version is None  # … but are never served
    rolled = wait_until(lambda: server.events_of("rolled_back"))
    assert rolled[0]["version"] is None


def test_version_refused_by_golden_validation_keeps_the_fallback_slot(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, run_agent: Callable[..., AgentThread]
) -> None:
    """v1 and v2 installed: the inactive slot holds v1, the only other good model. A v3 that fails
    its golden set must not have been staged over it: the device keeps its rollback target."""
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    server.publish(releases[2])
    agent.wait_version(2)
    cases = golden_cases(tiny_classifier(3), 8, image_case=True)
    cases[0]["logits"] = [v + 1.0 for v in cases[0]["logits"]]
    server.publish(make_release(3, [key], golden={"tolerance": 1e-4, "cases": cases}))
    wait_until(lambda: server.events_of("failed", 3), what="v3 refused")
    agent.stop()
    root = agent.agent.config.model_dir / "slots"
    slots = SlotStore(root)
    assert slots.version(slots.inactive()) == 1  # the fallback is untouched …
    _flip_byte(root / f"{slots.active()}.onnx")

    server.target = None
    again = run_agent()
    assert again.version == 1  # … and still serves when the active slot is damaged
    rolled = wait_until(lambda: server.events_of("rolled_back"))
    assert rolled[0]["version"] == 1 and rolled[0]["from_version"] == 2
