"""kill -9 of a real `python -m device_agent run` process mid-download and mid-swap, then a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import artifact as A
from device_agent.config import CRASH_AT_ENV
from device_agent.slots import SlotStore

from .conftest import AgentThread, wait_until
from .fakeserver import SECRET, FakeServer
from .models import make_release, png_bytes

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    def __init__(self, server: FakeServer, model_dir: Path, trust: Path, log: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        command = [
            sys.executable, "-m", "device_agent", "run",
            "--server", server.url, "--model", "shapes", "--model-dir", str(model_dir), "--trust", str(trust),
            "--serve", f"127.0.0.1:{self.port}", "--poll-interval", "0.1", "--threads", "1",
        ]  # fmt: skip
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, stdout=out, stderr=out, env={**os.environ, "OTA_ENROLLMENT_SECRET": SECRET, **env}
            )

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.port}/status", timeout=2).json())
        except httpx.TransportError:
            return None

    def wait_status(self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"agent exited with {self.proc.returncode}:\n{self.log.read_text()}"
            status = self.status()
            return status if status is not None and status["state"] != "starting" and check(status) else None

        return dict(wait_until(ready, timeout, what))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL


def _served_after_restart(model_dir: Path, key: A.SigningKey) -> int:
    """The version a restart will serve: the active slot, re-verified through the door as boot does."""
    slots = SlotStore(model_dir / "slots")
    active = slots.active()
    assert active is not None
    return slots.load(active, trust=A.TrustPolicy.of([key.verify_key]), model="shapes").version


@pytest.fixture()
def spawn(
    server: FakeServer, make_config: Callable[..., Any], trust_file: Path, tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    procs: list[AgentProcess] = []

    def start(**env: str) -> AgentProcess:
        proc = AgentProcess(server, make_config().model_dir, trust_file, tmp_path / "agent.log", env)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def test_kill_during_download_then_restart_serves_old_model_and_resumes_with_range(
    server: FakeServer, key: A.SigningKey, run_agent: Callable[..., AgentThread], spawn: Callable[..., AgentProcess]
) -> None:
    v1, v2 = make_release(1, [key], size=64), make_release(2, [key], size=64)
    server.publish(v1)
    setup = run_agent()
    setup.wait_version(1)
    setup.stop()

    server.deltas = False
    server.throttle = 0.1  # ~8 KB per 0.1 s: the kill lands mid-download
    server.publish(v2)
    agent = spawn()
    part = setup.agent.config.model_dir / "downloads" / f"{v2.payload_sha}.part"
    wait_until(lambda: part.exists() and part.stat().st_size >= 24_000, 20, "a partial download")
    agent.kill()
    kept = part.stat().st_size
    assert 0 < kept < len(v2.payload)
    assert _served_after_restart(setup.agent.config.model_dir, key) == 1

    server.throttle = 0.0
    again = spawn()
    again.wait_status(lambda s: s["version"] == 2, "v2 after the resumed download")
    resumed = [int(r.removeprefix("bytes=").rstrip("-")) for r in server.ranges()]
    assert resumed and resumed[0] >= kept - 8192 and resumed[0] > 0
    wait_until(lambda: server.events_of("installed", 2))
    assert not server.events_of("failed")


@pytest.mark.parametrize("point", ["swapping:before-pointer", "swapping:after-pointer"])
def test_kill_during_swap_then_restart_serves_a_valid_model_and_completes(
    point: str,
    server: FakeServer,
    key: A.SigningKey,
    run_agent: Callable[..., AgentThread],
    spawn: Callable[..., AgentProcess],
) -> None:
    server.publish(make_release(1, [key]))
    setup = run_agent()
    setup.wait_version(1)
    setup.stop()

    server.publish(make_release(2, [key]))
    doomed = spawn(**{CRASH_AT_ENV: point})
    assert doomed.proc.wait(timeout=30) == -signal.SIGKILL
    # Whichever side of the pointer the kill landed on, the active slot is whole and passes the door.
    assert _served_after_restart(setup.agent.config.model_dir, key) == (1 if point.endswith("before-pointer") else 2)

    again = spawn()
    again.wait_status(lambda s: s["version"] == 2, "v2 after the interrupted swap")
    r = httpx.post(f"http://127.0.0.1:{again.port}/predict", content=png_bytes(8))
    assert r.status_code == 200 and r.json()["version"] == 2
    wait_until(lambda: server.events_of("installed", 2))
    assert not server.events_of("failed")


def test_agent_package_imports_neither_torch_nor_the_server() -> None:
    code = (
        "import sys, device_agent, device_agent.cli, device_agent.simulate; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'server', 'model_builder', 'fastapi'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_model_that_kills_the_agent_while_loading_at_boot_is_abandoned_after_three_tries(
    server: FakeServer, key: A.SigningKey, run_agent: Callable[..., AgentThread], spawn: Callable[..., AgentProcess]
) -> None:
    """The crash point `boot:loading:b` SIGKILLs the agent after it counted its attempt to load slot b
    (v2, active) and before the model loads, as a segfault in the runtime would: after three such
    deaths the agent serves the valid other slot instead of dying forever."""
    server.publish(make_release(1, [key]))
    setup = run_agent()
    setup.wait_version(1)
    server.publish(make_release(2, [key]))
    setup.wait_version(2)
    setup.stop()
    assert SlotStore(setup.agent.config.model_dir / "slots").active() == "b"

    for attempt in range(3):
        dying = spawn(**{CRASH_AT_ENV: "boot:loading:b"})
        assert dying.proc.wait(timeout=60) == -signal.SIGKILL, f"start {attempt + 1} did not die loading slot b"
    agent = spawn(**{CRASH_AT_ENV: "boot:loading:b"})
    status = agent.wait_status(lambda s: s["version"] is not None, "the agent serving after three crashes", 60)
    assert status["version"] == 1 and status["slot"] == "a"  # the fallback, not another crash
    assert status["failed_versions"] == {"2": "crash_loop"}  # and v2 is not installed again
    rolled = wait_until(lambda: server.events_of("rolled_back"), what="rolled_back reported")
    assert rolled[0]["version"] == 1 and rolled[0]["from_version"] == 2 and rolled[0]["reason"] == "crash_loop"
