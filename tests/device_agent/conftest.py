"""Fixtures: keys on disk, a fake server per test, agents run in a background thread, and the real
server's `env` (for the modules marked with `realserver.ON_SQLITE_FILE`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import artifact as A
from device_agent import Agent, AgentConfig
from tests.server import conftest as server_fixtures
from tests.support import wait_for as wait_until

from .fakeserver import SECRET, FakeServer
from .models import MODEL, Release, make_release

# The server tests' `env` and the fixtures it builds on; `realserver.ON_SQLITE_FILE` picks its backend pair.
env = server_fixtures.env
sqlite_template = server_fixtures.sqlite_template
publisher_key_file = server_fixtures.publisher_key_file


class AgentThread:
    """An `Agent` running its event loop on a thread, as `device-agent run` does on the main one."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.agent.run())
        except BaseException as e:  # surfaced by stop() so a test sees the agent's crash
            self.error = e

    def start(self) -> AgentThread:
        self._thread.start()
        wait_until(lambda: self.agent.ready.is_set() or self.error, what="agent start")
        return self

    @property
    def version(self) -> int | None:
        return self.agent.status().get("version")

    def wait_version(self, version: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.version == version, timeout, f"the agent to serve v{version} (has {self.version})")

    def stop(self) -> None:
        self.agent.stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "agent did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="session")
def key(signing_key: A.SigningKey) -> A.SigningKey:
    """The publisher key the agents trust (the shared `signing_key`)."""
    return signing_key


@pytest.fixture(scope="session")
def stranger_key(other_key: A.SigningKey) -> A.SigningKey:
    return other_key


@pytest.fixture(scope="session")
def releases(key: A.SigningKey) -> dict[int, Release]:
    """v1–v3 of the tiny model, signed by the trusted key (built once: golden sets cost a session each)."""
    return {v: make_release(v, [key]) for v in (1, 2, 3)}


@pytest.fixture()
def trust_file(tmp_path: Path, key: A.SigningKey) -> Path:
    path = tmp_path / "publisher.pub"
    A.save_public_key(key.verify_key, path)
    return path


@pytest.fixture()
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


def agent_config(server: FakeServer, key: A.SigningKey, model_dir: Path, **overrides: Any) -> AgentConfig:
    """An agent of `server` that trusts `key`, tuned for tests: polls, backs off and reports fast."""
    config = AgentConfig(
        server=server.url,
        model=MODEL,
        model_dir=model_dir,
        trust=A.TrustPolicy.of([key.verify_key]),
        enroll_secret=SECRET,
        poll_interval=0.05,
        force_poll_interval=True,
        backoff_base=0.05,
        backoff_max=0.4,
        metrics_interval=0.3,
        threads=1,
        http_timeout=5.0,
    )
    return replace(config, **overrides)


@pytest.fixture()
def make_config(tmp_path: Path, key: A.SigningKey, server: FakeServer) -> Callable[..., AgentConfig]:
    def build(**overrides: Any) -> AgentConfig:
        return agent_config(server, key, tmp_path / "device", **overrides)

    return build


@contextlib.contextmanager
def agent_starter(make_config: Callable[..., AgentConfig]) -> Iterator[Callable[..., AgentThread]]:
    """`start(...)` runs an agent of `make_config(...)`; every agent started is stopped on leaving."""
    started: list[AgentThread] = []

    def start(*args: Any, **overrides: Any) -> AgentThread:
        runner = AgentThread(make_config(*args, **overrides)).start()
        started.append(runner)
        return runner

    try:
        yield start
    finally:
        for runner in started:
            if runner._thread.is_alive():
                runner.stop()


@pytest.fixture()
def run_agent(make_config: Callable[..., AgentConfig]) -> Iterator[Callable[..., AgentThread]]:
    """Start agents (stopped at the end of the test, even when it fails)."""
    with agent_starter(make_config) as start:
        yield start
