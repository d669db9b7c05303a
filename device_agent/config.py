"""Everything that shapes one agent, passed in (STYLE.md 7): nothing below reads globals or the CLI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import artifact as A

from .fsutil import Disk

# Test seam (the kill -9 tests): `device-agent run` reads it into `AgentConfig.crash_at`.
CRASH_AT_ENV = "DEVICE_AGENT_CRASH_AT"


def default_threads() -> int:
    """Intra-op threads per inference. One: a device's parallelism comes from concurrent requests
    (see `concurrency`); on 2 cores a 224 px SqueezeNet runs no faster with 2 (4.0 ms vs 4.7 ms)."""
    return 1


def cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class AgentConfig:
    server: str
    model: str
    model_dir: Path
    trust: A.TrustPolicy | None  # --trust keys: the publisher keys (legacy), or the ones used until a keys document
    device_id: str | None = None
    enroll_secret: str | None = None
    token_file: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    poll_interval: float = 300.0  # until the server's offers name their own
    force_poll_interval: bool = False  # ignore the server's poll_interval (tests, demos, simulators)
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    metrics_interval: float = 60.0
    max_crashes: int = 3  # per state and version: the next crash fails the version
    threads: int = field(default_factory=default_threads)
    concurrency: int = field(default_factory=cores)  # inferences run at once; more requests wait their turn
    update_niceness: int = 0  # >0: update work yields the CPU to /predict (slower swaps, flatter tail)
    durable: bool = True  # fsync state, slots and events (the simulator turns it off)
    http_timeout: float = 30.0
    download_min_rate: float = 1024.0  # bytes/s a download must keep up over `download_stall_window` …
    download_stall_window: float = 60.0  # … seconds, or it is cut and resumed later (a trickling server)
    crash_at: str | None = None  # test seam: SIGKILL this process at the named crash point (see CRASH_AT_ENV)
    disk: Disk = field(default_factory=Disk, compare=False, repr=False)  # every write goes through it (test seam)
    root: A.TrustState | None = None  # --root: the root of trust; publisher keys then rotate (device_agent.trust)
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)  # when tokens renew (test seam)

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.metrics_interval <= 0:
            raise ValueError("poll and metrics intervals must be positive")
        if self.trust is None and self.root is None:
            raise ValueError("an agent needs a root of trust (--root) or trusted publisher keys (--trust)")
        if self.max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        if not (self.server.startswith("http://") or self.server.startswith("https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {self.server!r}")
