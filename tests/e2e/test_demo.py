"""`make demo` end to end, small: every part for real, on loopback, with DEMO_EXIT=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_moves_a_fleet_to_v2_without_a_failed_request(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEMO_EXIT": "1",
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PER_CLASS": "20",
        "DEMO_EPOCHS": "1",
        "DEMO_FT_EPOCHS": "1",
        "DEMO_FLEET": "8",
        "DEMO_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "failed requests = 0" in out
    assert "versions seen [1, 2]" in out  # the client saw the swap happen under load
    assert "delta v1→v2" in out
    logs = tmp_path / "demo" / "logs"
    assert (logs / "server.log").exists() and (logs / "agent.log").exists()
