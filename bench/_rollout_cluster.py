"""bench.rollouts' machinery: server processes and simulators it starts and stops, an admin client.

Used by both parts of the benchmark (:mod:`bench._rollout_scenarios`, :mod:`bench._rollout_poll`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = "shapes"
POLL_INTERVAL = 5  # seconds: the devices' poll interval, and the unit of the decision delay
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


# -- the servers and the fleet ------------------------------------------------------------------


@dataclass
class Cluster:
    urls: list[str]
    admin: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def get(self, path: str, i: int = 0) -> Any:
        r = httpx.get(f"{self.urls[i % len(self.urls)]}{path}", headers=self.admin, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any, i: int = 0) -> Any:
        r = httpx.post(f"{self.urls[i % len(self.urls)]}{path}", json=body, headers=self.admin, timeout=60)
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        return r.json()

    def fleet_versions(self) -> dict[int, int]:
        data = self.get("/v1/fleet")
        return {v["version"]: v["devices"] for m in data["models"] if m["model"] == MODEL for v in m["versions"]}

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{' '.join(map(str, p.args[:4]))} exited early ({p.returncode}); see the logs")


def start(stack: ExitStack, argv: list[str], env: dict[str, str], log_file: Path, stdout: Path | None = None) -> Any:
    out = (stdout or log_file).open("wb")
    err = log_file.open("ab") if stdout else subprocess.STDOUT
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    return proc


def wait_until(what: str, check: Callable[[], bool], timeout: float, cluster: Cluster, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(every)
    log(f"timed out after {timeout:.0f} s waiting for {what}")
    return False
