"""bench.rollouts, part 2: what an active rollout costs the poll, against no rollout and bare FastAPI.

See :mod:`bench.rollouts` for what is measured and the goals.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

import artifact as A
from bench._common import private_pg_schema
from bench._loadgen import cpu_seconds, run_load, uvicorn_process
from bench._rollout_cluster import ROOT, log
from bench.poll import ADMIN_TOKEN, SECRET_KEY, analyze, enroll_devices, squeezenet_artifact


def bucket(rollout_id: int, device_id: str) -> int:
    """DESIGN.md's cohort rule, written out independently of the server (a disagreement shows as 200s)."""
    return int(hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()[:8], 16) % 10000


def poll_cost(work: Path, args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, bool]]:
    from server.db.migrate import upgrade

    key = A.generate_key()
    A.save_public_key(key, work / "poll.pub.pem")
    with private_pg_schema("ota_bench_rollouts") as url:
        log(f"[poll] migrating and enrolling {args.poll_devices:,} devices")
        upgrade(url)
        tokens = enroll_devices(url, args.poll_devices)
        ids = [f"cam-{i:06d}" for i in range(args.poll_devices)]  # enroll_devices' naming
        analyze(url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTA_")},
            "PYTHONPATH": str(ROOT),
            "OTA_DATABASE_URL": url,
            "OTA_STORAGE_URL": f"file://{work / 'poll-blobs'}",
            "OTA_SECRET_KEY": SECRET_KEY,
            "OTA_ADMIN_TOKEN": ADMIN_TOKEN,
            "OTA_PUBLISHER_KEYS": str(work / "poll.pub.pem"),
        }
        with (
            uvicorn_process("server.cli:app_from_environment", env, work / "poll-server.log") as (port, pid),
            uvicorn_process("bench.poll:bare_app", env, work / "poll-bare.log") as (bare_port, bare_pid),
        ):
            base = f"http://127.0.0.1:{port}"
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            for version in range(1, args.rounds + 2):
                r = httpx.post(
                    f"{base}/v1/models/squeezenet/versions",
                    content=squeezenet_artifact(key, version),
                    headers=admin,
                    timeout=60,
                )
                r.raise_for_status()
            now = {"model": "squeezenet", "version": 1, "stages": [{"percent": 100}], "min_devices": 0}
            httpx.post(f"{base}/v1/rollouts", json=now, headers=admin, timeout=60).raise_for_status()
            time.sleep(1.5)  # the worker's registry view picks up v1 as the baseline
            steady = [("/v1/device/update?current_version=1", t) for t in tokens]
            names = ("bare FastAPI (constant JSON)", "poll, no active rollout → 204", "poll, active rollout → 204")
            rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}

            def measure(name: str, p: int, server_pid: int, spec: list[tuple[str, str]]) -> None:
                before = cpu_seconds(server_pid)
                res = run_load(p, spec, connections=32, warmup=args.warmup, duration=args.duration)
                res["cpu_us"] = (cpu_seconds(server_pid) - before) / max(1, res["total"]) * 1e6
                expected = "200" if "bare" in name else "204"
                if set(res["status"]) != {expected}:
                    raise RuntimeError(f"{name}: unexpected answers {res['status']}")
                rounds[name].append(res)
                log(f"[poll] round {len(rounds[name])}/{args.rounds} {name}: {res['rps']:,.0f} req/s")

            run_load(port, steady, connections=32, warmup=0.5, duration=2.0)  # a first, unmeasured warm-up
            for r_i in range(args.rounds):
                version = r_i + 2
                measure(names[0], bare_port, bare_pid, [("/bare", "")])
                measure(names[1], port, pid, steady)
                body = {
                    "model": "squeezenet",
                    "version": version,
                    "stages": [{"percent": 25, "soak_seconds": 86400}, {"percent": 100}],
                    "min_devices": 1_000_000,  # never decided while measured
                }
                rollout = httpx.post(f"{base}/v1/rollouts", json=body, headers=admin, timeout=60)
                rollout.raise_for_status()
                rid = rollout.json()["id"]
                time.sleep(1.5)
                during = [
                    (f"/v1/device/update?current_version={version if bucket(rid, d) < 2500 else 1}", t)
                    for d, t in zip(ids, tokens, strict=True)
                ]
                measure(names[2], port, pid, during)
                httpx.post(f"{base}/v1/rollouts/{rid}/abort", json={}, headers=admin, timeout=60).raise_for_status()
                time.sleep(1.5)
    bare = rounds[names[0]]
    med = {n: sorted(rounds[n], key=lambda r: r["rps"])[len(rounds[n]) // 2] for n in names}
    vs_bare = {n: statistics.median(r["rps"] / b["rps"] for r, b in zip(rounds[n], bare, strict=True)) for n in names}
    with_vs_without = statistics.median(
        w["rps"] / o["rps"] for w, o in zip(rounds[names[2]], rounds[names[1]], strict=True)
    )
    cpu = {n: statistics.median(r["cpu_us"] for r in rounds[n]) for n in names}
    lines = [
        f"{args.poll_devices:,} enrolled devices on PostgreSQL (private schema); the real server is one uvicorn "
        f"worker, a bare FastAPI app beside it; load from a separate process, 32 keep-alive connections, every poll "
        f"from another device; {args.rounds} rounds of {args.duration:.0f} s (+{args.warmup:.0f} s warm-up), each "
        f"round bare → no rollout → active rollout (a 25 % stage; its cohort already on the rollout's version, the "
        f"rest on the baseline), the rollout aborted after the round. Shown: the median round; ratios are medians "
        f"of per-round ratios.",
        "",
        "| endpoint | req/s | p50 ms | p99 ms | × bare | server CPU µs/req |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        m = med[n]
        ratio = "—" if n == names[0] else f"**{vs_bare[n]:.2f}×**"
        lines.append(f"| {n} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {ratio} | {cpu[n]:.0f} |")
    ok_rollout = with_vs_without >= 0.9
    ok_bare = vs_bare[names[2]] >= 0.6
    verdicts = [
        f"- Poll with an active rollout vs without: {'PASS' if ok_rollout else 'FAIL'} — {with_vs_without:.2f}× "
        f"(goal ≥ 0.9×; by server CPU per request {cpu[names[1]] / cpu[names[2]]:.2f}×).",
        f"- Poll with an active rollout vs bare FastAPI: {'PASS' if ok_bare else 'FAIL'} — {vs_bare[names[2]]:.2f}× "
        f"(goal ≥ 0.6×; without a rollout {vs_bare[names[1]]:.2f}×).",
    ]
    return lines, verdicts, {"poll_rollout": ok_rollout, "poll_bare": ok_bare}
