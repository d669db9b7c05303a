"""The fault suite's fixtures: one prepared device directory, copied for every fault, and agents
run in-process (tests/device_agent/conftest.py `AgentThread`) so that dozens of faults stay fast.

The prepared directory holds every file the agent persists: credentials.json, state.json (a job
for v3 stopped mid-download), events.jsonl (events the server refused to take yet), slots/active,
both slots (a = v1, the fallback; b = v2, active) and downloads/<sha>.part.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import artifact as A
from device_agent import AgentConfig
from device_agent.fsutil import Disk
from tests.device_agent.conftest import AgentThread, agent_starter
from tests.device_agent.conftest import agent_config as device_agent_config
from tests.device_agent.fakeserver import FakeServer
from tests.device_agent.models import Release, make_release
from tests.support import wait_for

FAULT_SETTINGS: dict[str, Any] = {"durable": False, "backoff_max": 0.3, "metrics_interval": 0.2}
CORRUPTIONS = ("truncated", "bit_flipped", "random_bytes", "wrong_json_type", "deleted")


def corrupt(path: Path, how: str, *, seed: int = 0) -> None:
    """Damage one persisted file the way a disk, a power cut or a person can."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit_flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x80  # high bit: also turns ASCII into invalid UTF-8
        path.write_bytes(bytes(flipped))
    elif how == "random_bytes":
        path.write_bytes(random.Random(seed).randbytes(max(len(data), 16)))
    elif how == "wrong_json_type":
        path.write_bytes(b"[2]\n")
    elif how == "deleted":
        path.unlink()
    else:
        raise ValueError(how)


@pytest.fixture(scope="session")
def big_releases(signing_key: A.SigningKey) -> dict[int, Release]:
    """v1–v3 with a payload large enough (tens of KB) for a download to be caught half-way."""
    return {v: make_release(v, [signing_key], size=64) for v in (1, 2, 3)}


@pytest.fixture(scope="module")
def fault_server(big_releases: dict[int, Release]) -> Iterator[FakeServer]:
    with FakeServer() as fake:
        fake.deltas = False
        for release in big_releases.values():
            fake.publish(release, target=False)
        yield fake


def agent_config(server: FakeServer, key: A.SigningKey, model_dir: Path, **overrides: Any) -> AgentConfig:
    """tests/device_agent's agent configuration, without fsync (dozens of faults stay fast)."""
    return device_agent_config(server, key, model_dir, **{**FAULT_SETTINGS, **overrides})


@pytest.fixture(scope="module")
def prepared(fault_server: FakeServer, signing_key: A.SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device directory holding every file the agent persists (see the module docstring)."""
    server = fault_server
    root = tmp_path_factory.mktemp("prepared") / "device"
    agent = AgentThread(agent_config(server, signing_key, root)).start()
    try:
        server.target = 1
        agent.wait_version(1)
        server.events_status = 503  # from now on events stay queued in events.jsonl
        server.target = 2
        agent.wait_version(2)
        server.chunk, server.throttle, server.target = 1024, 0.05, 3
        part = root / "downloads" / f"{server.releases[3].payload_sha}.part"
        wait_for(lambda: part.exists() and part.stat().st_size >= 4096, 20, "a partial download of v3")
    finally:
        agent.stop()
        server.events_status, server.throttle, server.chunk, server.target = None, 0.0, 8192, None
    assert {p.name for p in (root / "slots").iterdir()} >= {"active", "a.onnx", "b.onnx", "a.meta.json"}
    assert (root / "events.jsonl").read_bytes() and (root / "credentials.json").exists()
    return root


@pytest.fixture()
def device_dir(prepared: Path, tmp_path: Path) -> Path:
    """A fresh copy of the prepared directory for one fault."""
    copy = tmp_path / "device"
    shutil.copytree(prepared, copy)
    return copy


@pytest.fixture()
def start_agent(fault_server: FakeServer, signing_key: A.SigningKey) -> Iterator[Callable[..., AgentThread]]:
    """Start an in-process agent on a directory (stopped at the end of the test)."""
    fault_server.events.clear()  # each fault judged on its own events
    fault_server.requests.clear()

    def config(model_dir: Path, *, disk: Disk | None = None, **overrides: Any) -> AgentConfig:
        return agent_config(fault_server, signing_key, model_dir, disk=disk or Disk(), **overrides)

    with agent_starter(config) as start:
        yield start
    fault_server.target = None
