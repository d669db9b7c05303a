"""`make demo`'s plumbing: progress lines, the processes it starts (and always stops), waiting, the /predict client.

Nothing here knows the story; `demo.py` tells it, `_demo_fleet.py` reads the server, `_demo_summary.py` sums up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent  # the venv running the demo: model-builder, ota-server, device-agent

STARTED = time.monotonic()


class DemoError(Exception):
    """A step of the story failed: one line for the user (main prints it and exits 1)."""


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment; a value that is not one is refused by name, not with a traceback."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DemoError(f"{name} must be a whole number, got {value!r}") from None


def env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise DemoError(f"{name} must be a number, got {value!r}") from None


def say(msg: str) -> None:
    msg = f"[{time.monotonic() - STARTED:4.0f} s] {msg}"
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


class Processes:
    """Every background process the demo starts; all are stopped on exit, whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, stdout: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        out = stdout.open("wb") if stdout else log
        proc = subprocess.Popen(argv, stdout=out, stderr=log, env={**os.environ, **(env or {})}, start_new_session=True)
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """SIGTERM one process and wait for it (the fleet prints its report when told to stop)."""
        self.running = [(n, p) for n, p in self.running if p is not proc]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.running):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, text=True, **kw)
    if result.returncode != 0:
        raise DemoError(f"step failed ({result.returncode}): {' '.join(argv)}\n{result.stderr or ''}")
    return result


def run_all(argvs: list[list[str]]) -> None:
    """Run independent commands side by side, as many at once as there are cores; print their output in order.

    Packaging four runs one after the other took 34 s on 2 cores, most of it each process importing torch.
    """
    waiting, running, done = list(argvs), [], []
    while waiting or running:
        while waiting and len(running) < (os.cpu_count() or 1):
            argv = waiting.pop(0)
            running.append((argv, subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        argv, proc = running.pop(0)
        out, err = proc.communicate()
        done.append((argv, proc.returncode, out, err))
    for argv, code, _out, err in done:
        if code != 0:
            raise DemoError(f"step failed ({code}): {' '.join(argv)}\n{err}")
    for _argv, _code, out, _err in done:
        print(out, end="", flush=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.running:
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with status {proc.returncode}; see {procs.logs / (name + '.log')}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def server_env(work: Path, *, admin: str, enroll: str, publisher_key: Path, poll_interval: int) -> dict[str, str]:
    """`ota-server serve`'s environment on one host: SQLite and blob files under `work`, no enrollment limits
    (a simulated fleet enrolls from 127.0.0.1 alone). The demo and bench/fleet.py start their servers with it."""
    return {
        "OTA_DATABASE_URL": f"sqlite:///{work / 'ota.db'}",
        "OTA_STORAGE_URL": f"file://{work / 'blobs'}",
        "OTA_ADMIN_TOKEN": admin,
        "OTA_ENROLLMENT_SECRET": enroll,
        "OTA_PUBLISHER_KEYS": str(publisher_key),
        "OTA_POLL_INTERVAL": str(poll_interval),
        "OTA_ENROLL_RATE": "0",
        "OTA_ENROLL_GLOBAL_RATE": "0",
    }


def free_port(preferred: int) -> int:
    """`preferred` if it is free (0: any), else one the kernel picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free TCP port on 127.0.0.1")


class PredictLoad(threading.Thread):
    """A client calling /predict at a steady rate, counting every answer that is not a 200."""

    def __init__(self, url: str, image: bytes, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.image, self.period = url, image, 1.0 / rate
        self.ok = self.failed = 0
        self.versions: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, content=self.image, headers={"Content-Type": "image/png"})
                    if r.status_code == 200:
                        self.ok += 1
                        self.versions.add(int(r.json()["version"]))
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                next_at = max(next_at + self.period, time.monotonic() - 1.0)
                self.stop.wait(max(0.0, next_at - time.monotonic()))
