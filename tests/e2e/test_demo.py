"""`make demo` end to end, small: every part for real, on loopback, with DEMO_EXIT=1.

The story it must tell: v1 is the fp32 run after Deep Compression (33 %, 6 bits), so the fleet downloads
it once at a fraction of the fp32 size; v2 (a fine-tune compressed from v1's masks and codebooks) rolled
out 10 → 50 → 100 % by itself as a delta of a few kB while a client kept calling /predict; v3
(SqueezeNet 1.0, about twice as slow) halted by the latency gate at its first stage, the fleet left on v2
except the canaries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 15 min measured at a load average of 20 (other sessions' suites beside it)
def test_demo_ships_compressed_v1_then_v2_as_a_small_delta_and_the_latency_gate_halts_v3(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEMO_EXIT": "1",
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PER_CLASS": "20",
        "DEMO_EPOCHS": "2",
        "DEMO_COMPRESS_STEPS": "20",
        "DEMO_FT_EPOCHS": "1",
        "DEMO_V2_COMPRESS_STEPS": "10",
        "DEMO_V3_EPOCHS": "1",
        "DEMO_V3_PER_CLASS": "10",
        "DEMO_FLEET": "8",
        "DEMO_PORT": "0",
        "DEMO_SOAK": "20",
        "DEMO_MIN_SAMPLES": "150",
        "DEMO_MAX_LOSS": "100",  # this tiny, barely trained model is no test of compress's accuracy guard
    }
    demo = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = demo.communicate(timeout=1700)
    except subprocess.TimeoutExpired:
        demo.send_signal(signal.SIGINT)  # the demo stops the server, agent and fleet it started
        out, err = demo.communicate(timeout=60)
        pytest.fail("the demo did not finish within 1,700 s:\n" + out[-4000:] + err[-3000:])
    assert demo.returncode == 0, out[-4000:] + err[-3000:]
    assert "failed requests = 0" in out
    assert "versions seen [1, 2]" in out  # the client saw the swap to v2 happen under load
    assert "gate:latency_p95_ratio" in out  # the summary says why v3 stopped

    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    models = summary["models"]
    fp32, c1, c2 = models["fp32"], models["v1"], models["v2"]
    # v1 is the compressed model, and that is what the device downloaded: once, in full, a tenth of fp32's size
    assert (c1["bits"], round(c1["density"], 2)) == (6, 0.33)
    assert c1["payload_bytes"] < 500_000 and c1["payload_bytes"] * 8 < fp32["payload_bytes"], models
    installs = {i["version"]: i for i in summary["agent_installs"]}
    assert (installs[1]["source"], installs[1]["bytes"]) == ("full", c1["payload_bytes"]), installs
    # v2 travelled as the server's delta from v1: a few kB, not a second full payload
    delta = summary["delta_v1_v2_bytes"]
    assert delta is not None and delta < 10_000 and delta * 20 < c2["payload_bytes"], (delta, c2)
    assert (installs[2]["source"], installs[2]["bytes"]) == ("delta", delta), installs
    # the summary puts fp32 and compressed side by side, accuracy included; the compressed model is no
    # worse than a barely trained fp32 parent by more than noise on 40 validation images
    line = next(x for x in out.splitlines() if x.startswith("fp32 vs compressed:"))
    assert f"{fp32['accuracy']:.2%}" in line and f"{c1['accuracy']:.2%}" in line, line
    assert f"{fp32['payload_bytes']:,} B" in line and f"{c1['payload_bytes']:,} B" in line, line
    assert c1["accuracy"] >= fp32["accuracy"] - 0.15, models
    assert all(summary["story"].values()), summary["story"]

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
