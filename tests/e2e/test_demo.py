"""`make demo` end to end, small: every part for real, on loopback, with DEMO_EXIT=1.

The story it must tell: v1 rolled out at once; v2 rolled out 10 → 50 → 100 % by itself while a
client kept calling /predict; v3 (SqueezeNet 1.0, about twice as slow) halted by the latency gate at
its first stage, the fleet left on v2 except the canaries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_rolls_v2_out_in_stages_and_the_latency_gate_halts_v3_at_the_canaries(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEMO_EXIT": "1",
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PER_CLASS": "20",
        "DEMO_EPOCHS": "1",
        "DEMO_FT_EPOCHS": "1",
        "DEMO_V3_EPOCHS": "1",
        "DEMO_FLEET": "8",
        "DEMO_PORT": "0",
        "DEMO_SOAK": "20",
        "DEMO_MIN_SAMPLES": "150",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    out = done.stdout
    assert "failed requests = 0" in out
    assert "versions seen [1, 2]" in out  # the client saw the swap to v2 happen under load
    assert "delta v1→v2" in out
    assert "gate:latency_p95_ratio" in out  # the summary says why v3 stopped

    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    v1, v2, v3 = summary["rollouts"]
    assert (v1["version"], v1["state"], len(v1["stages"])) == (1, "completed", 1)

    assert (v2["version"], v2["state"]) == (2, "completed")
    assert [s["percent"] for s in v2["stages"]] == [10, 50, 100]
    events = [(h["event"], h["stage"], h["by"]) for h in v2["history"]]
    assert events == [
        ("created", 0, "bootstrap"),  # the admin token from OTA_ADMIN_TOKEN
        ("stage_advanced", 1, "system"),
        ("stage_advanced", 2, "system"),
        ("completed", 2, "system"),
    ], events

    assert (v3["version"], v3["state"], v3["reason"], v3["stage"]) == (3, "paused", "gate:latency_p95_ratio", 0)
    halted = [h for h in v3["history"] if h["event"] == "halted"]
    assert len(halted) == 1 and halted[0]["by"] == "system" and halted[0]["stage"] == 0
    assert halted[0]["detail"].startswith("latency_p95_ratio = "), halted
    canaries = v3["stages"][0]["cohort"]
    assert canaries >= 1
    assert summary["fleet"].get("v3", 0) <= canaries
    assert summary["fleet"].get("v2", 0) + summary["fleet"].get("v3", 0) == 9  # 8 simulated + the real agent
    assert summary["predict"]["failed"] == 0 and summary["predict"]["ok"] > 0

    logs = tmp_path / "demo" / "logs"
    assert (logs / "server.log").exists() and (logs / "agent.log").exists()
