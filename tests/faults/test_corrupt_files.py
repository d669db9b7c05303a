"""Every file the agent reads back is untrusted input: damaged in any way, it is reset, never a crash.

Each fault is applied to a copy of a device directory that holds every persisted file (see
conftest.py); the agent must start, answer /predict with a verified model, and then reach the
offered version (v3) without a hand on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.device_agent.conftest import AgentThread
from tests.device_agent.fakeserver import FakeServer
from tests.device_agent.models import png_bytes
from tests.support import wait_for

from .conftest import CORRUPTIONS, corrupt

# Every file the agent persists, relative to its model directory (`*` is the partial download).
PERSISTED = (
    "credentials.json",
    "state.json",
    "events.jsonl",
    "slots/active",
    "slots/b.onnx",
    "slots/b.manifest.json",
    "slots/b.signatures.json",
    "slots/b.meta.json",
    "slots/a.onnx",
    "downloads/*",
)


def _path(device_dir: Path, name: str) -> Path:
    if name.endswith("*"):
        (found,) = (device_dir / name[:-1]).iterdir()
        return found
    return device_dir / name


def _serves_verified_then_reaches_v3(agent: AgentThread, server: FakeServer) -> None:
    assert agent.error is None, f"the agent did not start: {agent.error!r}"
    answer = agent.agent.predict(png_bytes(64))
    # v2 (active), the v1 fallback when v2's slot is damaged, or v3 when the resumed download of the
    # prepared directory already finished: each a verified model
    assert answer["version"] in (1, 2, 3)
    server.target = 3
    agent.wait_version(3)
    assert agent.error is None


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("name", PERSISTED)
def test_corrupted_persisted_file_still_serves_and_reaches_the_offered_version(
    name: str, how: str, device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    corrupt(_path(device_dir, name), how)
    _serves_verified_then_reaches_v3(start_agent(device_dir), fault_server)


def test_unreadable_slot_pointer_chooses_by_verifying_both_slots(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    """One flipped bit in slots/active made every start raise UnicodeDecodeError."""
    (device_dir / "slots" / "active").write_bytes(b"\xe2\n")
    agent = start_agent(device_dir)
    assert agent.version == 2  # both slots verified, the newer valid one served
    assert (device_dir / "slots" / "active").read_bytes() == b"b\n"  # and the pointer rewritten
    _serves_verified_then_reaches_v3(agent, fault_server)


def test_garbled_credentials_are_reset_and_the_device_enrolls_again(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    (device_dir / "credentials.json").write_bytes(b'{"token": ["not", "a", "token"], "server": 7}')
    enrollments = len(fault_server.enrollments)
    agent = start_agent(device_dir)
    _serves_verified_then_reaches_v3(agent, fault_server)
    assert len(fault_server.enrollments) == enrollments + 1
    assert any(r.startswith("credentials.json") for r in agent.agent.status()["storage"]["files_reset"])
    assert isinstance(json.loads((device_dir / "credentials.json").read_text())["token"], str)


def test_state_file_with_a_wrong_field_type_is_reset_not_a_crash_loop(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    """A well-formed state.json with `"failed": [2]` crashed every start (AttributeError)."""
    state = device_dir / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "failed": [2]}))
    agent = start_agent(device_dir)
    assert any(r.startswith("state.json") for r in agent.agent.status()["storage"]["files_reset"])
    _serves_verified_then_reaches_v3(agent, fault_server)


def test_state_file_with_a_nonsense_poll_interval_does_not_stop_polling(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    state = device_dir / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "poll_interval": "soon"}))
    _serves_verified_then_reaches_v3(start_agent(device_dir, force_poll_interval=False), fault_server)


def test_deeply_nested_event_line_is_dropped_at_start(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    """One line of 100,000 nested arrays in events.jsonl raised RecursionError at every start."""
    events = device_dir / "events.jsonl"
    kept = len(events.read_bytes().splitlines())
    with events.open("ab") as f:
        f.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    agent = start_agent(device_dir)
    assert any(r.startswith("events.jsonl") for r in agent.agent.status()["storage"]["files_reset"])
    _serves_verified_then_reaches_v3(agent, fault_server)
    wait_for(lambda: len(fault_server.events) >= kept, what="the readable queued events delivered")


def test_downloads_directory_replaced_by_a_file_is_reset(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    downloads = device_dir / "downloads"
    for part in downloads.iterdir():
        part.unlink()
    downloads.rmdir()
    downloads.write_bytes(b"not a directory")
    agent = start_agent(device_dir)
    assert any(r.startswith("downloads/") for r in agent.agent.status()["storage"]["files_reset"])
    _serves_verified_then_reaches_v3(agent, fault_server)
    assert downloads.is_dir()
