"""Benchmark: a simulated fleet of 1,000 devices moves from v1 to v2 against the real server.

Builds two real SqueezeNet 1.1 artifacts (10 classes, 64 px; v2 = v1 with a retrained classifier,
the quick-update case), starts `ota-server serve` (SQLite, local blob storage), publishes and rolls out v1, runs
`device-agent simulate --devices N` until every device serves v1, rolls out v2 at once and times the fleet's
move to v2 — each simulated device doing the real download, delta, verification and golden-set work.
Prints a table and a verdict against issue 5's goal (1,000 devices within 2 minutes, no errors), and
the bytes sent with deltas against what full payloads would have cost. Results go to
docs/benchmarks.md (section `fleet`).

    .venv/bin/python -m bench.fleet [--devices 1000] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import artifact as A
from bench._report import log, write_section
from model_builder.export import export_bytes
from model_builder.package import build_artifact
from model_builder.squeezenet import squeezenet1_1
from scripts._demo_procs import server_env  # the demo's server, on one host (run from the repository root)

BIN = Path(sys.executable).parent
LABELS = [f"class{i}" for i in range(10)]
PREPROCESS = {"size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


def export(model: torch.nn.Module) -> bytes:
    return export_bytes(model, 64)


def fleet_on(url: str, headers: dict[str, str], version: int) -> int:
    data = httpx.get(f"{url}/v1/fleet", headers=headers, timeout=10).json()
    return sum(
        v["devices"] for m in data["models"] if m["model"] == "shapes" for v in m["versions"] if v["version"] == version
    )


def roll_out_now(url: str, headers: dict[str, str], version: int) -> None:
    """An immediate rollout (one stage of 100 %, `min_devices` 0): the version becomes the baseline at once."""
    body = {"model": "shapes", "version": version, "stages": [{"percent": 100}], "min_devices": 0}
    httpx.post(f"{url}/v1/rollouts", json=body, headers=headers, timeout=30).raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--goal-seconds", type=float, default=120.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = A.generate_key()
        A.save_public_key(key, work / "signing.pub")
        torch.manual_seed(0)
        v1 = squeezenet1_1(num_classes=10)
        v2 = squeezenet1_1(num_classes=10)
        v2.load_state_dict(v1.state_dict())
        torch.nn.init.normal_(v2.classifier[1].weight, std=0.02)  # the quick update: a new classifier
        artifacts = {}
        for version, model in ((1, v1), (2, v2)):
            data, _ = build_artifact(
                export(model), name="shapes", version=version, labels=LABELS, preprocess=PREPROCESS,
                metrics={"params": 727626}, sample_images=[], keys=[key], parent_version=version - 1 or None,
            )  # fmt: skip
            artifacts[version] = work / f"v{version}.otam"
            artifacts[version].write_bytes(data)
        admin, enroll = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        env = {
            **os.environ,
            **server_env(work, admin=admin, enroll=enroll, publisher_key=work / "signing.pub", poll_interval=5),
        }
        port = 18000 + secrets.randbelow(2000)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {admin}"}
        server = subprocess.Popen(
            [str(BIN / "ota-server"), "serve", "--port", str(port)], env=env,
            stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("wb"),
        )  # fmt: skip
        fleet = None
        try:
            for _ in range(120):
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            mb = [str(BIN / "model-builder"), "publish", "--server", url, f"--token={admin}", "--quiet"]
            subprocess.run([*mb[:2], str(artifacts[1]), *mb[2:]], check=True)
            roll_out_now(url, headers, 1)
            log(f"simulating {args.devices} devices; waiting for all of them to serve v1")
            report_path = work / "fleet.json"
            fleet = subprocess.Popen(
                [str(BIN / "device-agent"), "simulate", "--server", url, "--model", "shapes", "--trust",
                 str(work / "signing.pub"), f"--enroll-secret={enroll}", "--devices", str(args.devices),
                 "--until-version", "2", "--timeout", "1800", "--poll-interval", "5", "--json",
                 "--model-dir", str(work / "fleet")],
                stdout=report_path.open("wb"),
            )  # fmt: skip
            t0 = time.monotonic()
            while fleet_on(url, headers, 1) < args.devices:
                if fleet.poll() is not None:
                    raise SystemExit(f"the simulator exited early ({fleet.returncode})")
                time.sleep(1)
            v1_seconds = time.monotonic() - t0
            log(f"all on v1 after {v1_seconds:.0f} s; publishing v2")
            t1 = time.monotonic()
            subprocess.run([*mb[:2], str(artifacts[2]), *mb[2:]], check=True)
            roll_out_now(url, headers, 2)
            while fleet_on(url, headers, 2) < args.devices:
                if fleet.poll() is not None and fleet.returncode != 0:
                    raise SystemExit(f"the simulator failed ({fleet.returncode})")
                time.sleep(0.5)
            move_seconds = time.monotonic() - t1
            fleet.wait(300)
            report = json.loads(report_path.read_text())
        finally:
            for proc in (fleet, server):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)

    sent = report.get("bytes", {})
    full = report.get("full_payload_bytes", 0)
    failures = report.get("failed", {})
    ok = move_seconds <= args.goal_seconds and not failures
    cells = [
        f"{args.devices:,}", f"{v1_seconds:.0f}", f"**{move_seconds:.1f}**",
        f"{sent.get('delta', 0):,} / {sent.get('full', 0):,}", f"{full:,}", str(sum(failures.values())),
    ]  # fmt: skip
    table = "\n".join([
        "| devices | enroll + install v1 (s) | v1 → v2 (s) | bytes sent (delta / full) | without deltas | failures |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join(cells) + " |",
    ])  # fmt: skip
    verdict = (
        f"Verdict: {'PASS' if ok else 'FAIL'} — {args.devices:,} simulated devices moved v1 → v2 in "
        f"{move_seconds:.1f} s (goal ≤ {args.goal_seconds:.0f} s, no errors); the v1 column includes the "
        "full-payload installs."
    )
    print(table + "\n\n" + verdict)
    if not args.no_write:
        write_section("fleet", table + "\n\n" + verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
