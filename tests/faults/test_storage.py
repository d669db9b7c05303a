"""A full or read-only disk never stops the agent: it keeps serving, drops or defers what it cannot
write (metrics first), removes its own partial files, reports `failed` with reason `no_space`, and
installs the offered version once the fault clears. Faults come from the agent's own write seam,
:class:`device_agent.fsutil.Disk` (its ENOSPC and read-only modes), never from patching.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import artifact as A
from device_agent.errors import NoSpaceError
from device_agent.fsutil import Disk
from tests.device_agent.conftest import AgentThread
from tests.device_agent.fakeserver import FakeServer
from tests.device_agent.models import png_bytes
from tests.support import wait_for


def _keeps_serving(agent: AgentThread, version: int) -> None:
    assert agent.error is None and agent._thread.is_alive(), f"the agent stopped: {agent.error!r}"
    assert agent.agent.predict(png_bytes(64))["version"] == version


def _no_space_reported(server: FakeServer, version: int) -> None:
    wait_for(
        lambda: [e for e in server.events_of("failed", version) if e.get("reason") == "no_space"],
        what=f"failed v{version} reason no_space",
    )


def _downloads(device_dir: Path) -> list[str]:
    return sorted(p.name for p in (device_dir / "downloads").iterdir())


# Where the disk is full: `match` picks the files whose writes fail (None: every file).
WRITERS = {
    "everything": None,
    "downloads": "downloads",
    "slots": "slots",
    "state": "state.json",
    "events": "events.jsonl",
}


@pytest.mark.parametrize("where", list(WRITERS))
def test_disk_full_in_every_state_that_writes_keeps_serving_and_installs_once_cleared(
    where: str, device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    disk = Disk()
    # Full before the agent starts: the prepared directory holds v3's download in progress, which
    # it resumes at once, and a disk filled later could come too late for it.
    disk.fill(0, match=WRITERS[where])
    agent = start_agent(device_dir, disk=disk)
    agent.wait_version(2)
    fault_server.target = 3
    if where in ("everything", "downloads", "slots"):
        _no_space_reported(fault_server, 3)  # events still reach the server, from memory
        assert not [n for n in _downloads(device_dir) if n.endswith(".part")]  # its partial file is gone
        wait_for(lambda: agent.agent.status()["last_error"], what="the fault shown in /status")
        assert agent.agent.status()["last_error"]["reason"] == "no_space"
        for _ in range(3):  # metrics and retries meet the full disk too
            _keeps_serving(agent, 2)
        disk.clear()
    agent.wait_version(3)
    _keeps_serving(agent, 3)
    wait_for(lambda: fault_server.events_of("installed", 3), what="installed v3 reported")


class SlotCountingDisk(Disk):
    """The agent's write seam, counting the writes of a slot's ONNX file it refused."""

    def __init__(self) -> None:
        super().__init__()
        self.refused_slot_writes = 0

    def charge(self, path: Path, size: int) -> None:
        try:
            super().charge(path, size)
        except NoSpaceError:
            if path.parent.name == "slots" and path.name.endswith(".onnx"):
                self.refused_slot_writes += 1
            raise


def test_failing_slot_write_is_retried_with_the_bytes_verified_once(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 11: each retry of a slot write that fails writes the bytes verified (and the model
    validated) the first time: the payload is decoded and checked against its signed hash once,
    and `verified` is sent once, however often the write is retried."""
    decoded: list[int] = []
    door = A.install_full

    def counting(verified: A.VerifiedManifest, payload: Any) -> bytes:
        decoded.append(verified.manifest.version)
        return door(verified, payload)

    monkeypatch.setattr(A, "install_full", counting)
    disk = SlotCountingDisk()
    disk.fill(0, match="slots")
    fault_server.target = 3  # offered from the start: the prepared download of v3 goes on at once
    agent = start_agent(device_dir, disk=disk)
    _no_space_reported(fault_server, 3)
    wait_for(lambda: disk.refused_slot_writes >= 3, what="three refused writes of v3's slot")
    _keeps_serving(agent, 2)
    disk.clear()
    agent.wait_version(3)
    wait_for(lambda: fault_server.events_of("installed", 3), what="installed v3 reported")
    assert decoded.count(3) == 1, decoded
    assert len(fault_server.events_of("verified", 3)) == 1, fault_server.events_of("verified", 3)


def test_disk_full_during_download_keeps_serving_and_reports_no_space(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    """The disk fills up (another process) while v3 is being downloaded."""
    disk = Disk()
    for part in (device_dir / "downloads").iterdir():
        part.unlink()
    fault_server.chunk, fault_server.throttle = 1024, 0.05
    try:
        agent = start_agent(device_dir, disk=disk)
        fault_server.target = 3
        wait_for(lambda: _downloads(device_dir), what="the download of v3 under way")
        disk.fill(0)
        _no_space_reported(fault_server, 3)
        _keeps_serving(agent, 2)
        assert _downloads(device_dir) == []
        fault_server.throttle = 0.0
        disk.clear()
        agent.wait_version(3)
    finally:
        fault_server.chunk, fault_server.throttle = 8192, 0.0


def test_free_space_is_checked_against_the_offer_before_downloading(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    disk = Disk()
    # Less than the rest of v3's payload plus its slot: not a byte is fetched. Full before the agent
    # starts, as the prepared directory's v3 download resumes at once.
    disk.fill(4096, match="downloads")
    fetched = len(fault_server.requests)
    agent = start_agent(device_dir, disk=disk)
    agent.wait_version(2)
    fault_server.target = 3
    _no_space_reported(fault_server, 3)
    assert not [p for m, p, h in fault_server.requests[fetched:] if p.startswith("/v1/blobs/")]
    disk.clear()
    agent.wait_version(3)


def test_disk_full_at_start_still_boots_and_serves(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    """Resume saves state, boot counts its attempt, the queue rewrites itself: all at start."""
    disk = Disk()
    disk.fill(0)
    agent = start_agent(device_dir, disk=disk)
    _keeps_serving(agent, 2)
    fault_server.target = 3
    _no_space_reported(fault_server, 3)
    disk.clear()
    agent.wait_version(3)


def test_read_only_model_directory_serves_the_installed_model_and_reports_updates_impossible(
    device_dir: Path, start_agent: Callable[..., AgentThread], fault_server: FakeServer
) -> None:
    """The lock file used to be opened read-write, so the agent could not even start."""
    disk = Disk()
    disk.read_only = True
    agent = start_agent(device_dir, disk=disk)
    _keeps_serving(agent, 2)
    assert agent.agent.status()["storage"]["updates"].startswith("impossible")
    fault_server.target = 3
    failed = wait_for(lambda: fault_server.events_of("failed", 3), what="updates impossible reported")
    assert failed[0]["reason"] == "read_only"
    _keeps_serving(agent, 2)
    agent.stop()
    disk.read_only = False  # remounted read-write: the next start installs
    start_agent(device_dir, disk=disk).wait_version(3)
