"""bench.rollouts, part 1: the rollout scenarios (a good, a refused and a slow version) on a fleet.

See :mod:`bench.rollouts` for what is measured and the goals.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

import artifact as A
from bench._common import private_pg_schema
from bench._loadgen import free_port
from bench._rollout_cluster import MODEL, POLL_INTERVAL, ROOT, Cluster, log, start, wait_until

LABELS = [f"class{i}" for i in range(10)]
PREPROCESS = {"size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


# -- artifacts ----------------------------------------------------------------------------------


def build_artifacts(key: A.SigningKey, work: Path) -> dict[int, bytes]:
    import torch

    from model_builder.export import export_bytes
    from model_builder.package import build_artifact
    from model_builder.squeezenet import squeezenet1_0, squeezenet1_1

    torch.manual_seed(0)
    v1 = squeezenet1_1(num_classes=10)
    v2 = squeezenet1_1(num_classes=10)
    v2.load_state_dict(v1.state_dict())
    torch.nn.init.normal_(v2.classifier[1].weight, std=0.02)  # the quick update: a new classifier
    v4 = squeezenet1_0(num_classes=10)  # valid, passes its golden set, about twice the compute
    onnx = {1: export_bytes(v1.eval(), 64), 2: export_bytes(v2.eval(), 64), 4: export_bytes(v4.eval(), 64)}
    onnx[3] = onnx[2]
    out: dict[int, bytes] = {}
    for version in (1, 2, 3, 4):
        data, manifest = build_artifact(
            onnx[version], name=MODEL, version=version, labels=LABELS, preprocess=PREPROCESS,
            metrics={"params": 727626}, sample_images=[], keys=[key], parent_version=min(version - 1, 2) or None,
        )  # fmt: skip
        if version == 3:
            data = wrong_golden(manifest, A.read_artifact(data).payload, key)
        out[version] = data
    return out


def wrong_golden(manifest: A.Manifest, payload: bytes, key: A.SigningKey) -> bytes:
    """The same payload under a signed manifest whose golden answers are wrong: every device refuses it."""
    fields = manifest.model_dump(by_alias=True)
    for case in fields["golden"]["cases"]:
        case["top1"] = (case["top1"] + 1) % len(LABELS)
        case["logits"] = [-x - 1.0 for x in case["logits"]]
    return A.seal_artifact(A.build_manifest(**fields), payload, [key])


# -- part 1: the scenarios ----------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    version: int
    rollout: dict[str, Any]
    seconds: float


def spec(version: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": MODEL,
        "version": version,
        "stages": [{"percent": p, "soak_seconds": args.soak} for p in (5, 25, 100)],
        "min_devices": 10,
        "gates": [
            {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": args.min_samples},
            {"metric": "validation_failures", "max": 0},
        ],
    }


def describe(r: dict[str, Any]) -> str:
    stage = r["stages"][r["stage"]]
    c = stage["counts"]
    gates = ", ".join(f"{g['metric']} {g['value']} ({g['status']}, {g['samples']} samples)" for g in r["gates"])
    return (
        f"rollout {r['id']} v{r['version']}: {r['state']}{' (' + r['reason'] + ')' if r['reason'] else ''}, stage "
        f"{r['stage'] + 1} ({stage['percent']} %, cohort {stage['cohort']}: offered {c['offered']}, installed "
        f"{c['installed']}, failed {c['failed']}) | {gates}"
    )


def run_rollout(cluster: Cluster, name: str, version: int, args: argparse.Namespace, until: set[str]) -> Outcome:
    created = cluster.post("/v1/rollouts", spec(version, args), i=version)  # either server: both must agree
    rid = created["id"]
    t0 = time.monotonic()
    log(f"{name}: rollout {rid} of v{version} created")
    state: dict[str, Any] = {"r": created, "last": 0.0}

    def done() -> bool:
        r = state["r"] = cluster.get(f"/v1/rollouts/{rid}", i=int(time.monotonic()))
        if time.monotonic() - state["last"] >= 5:
            log(f"{name}: {describe(r)}")
            state["last"] = time.monotonic()
        return r["state"] in until

    wait_until(f"{name} to end", done, args.scenario_timeout, cluster)
    log(f"{name}: {describe(state['r'])}")
    return Outcome(name, version, state["r"], time.monotonic() - t0)


def stage_delays(r: dict[str, Any]) -> list[tuple[int, float, float | None]]:
    """(percent, soak, seconds from the soak's end to the transition that decided the stage) per stage."""
    decided = [h for h in r["history"] if h["event"] in ("stage_advanced", "stage_passed", "completed", "halted")]
    out = []
    for i, stage in enumerate(r["stages"]):
        if stage["started_at"] is None or i >= len(decided):
            out.append((stage["percent"], stage["soak_seconds"], None))
            continue
        soak_end = datetime.fromisoformat(stage["started_at"]).timestamp() + stage["soak_seconds"]
        out.append(
            (stage["percent"], stage["soak_seconds"], datetime.fromisoformat(decided[i]["at"]).timestamp() - soak_end)
        )
    return out


def scenarios(work: Path, args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, Any]]:
    from server.db.migrate import upgrade

    key = A.generate_key()
    A.save_public_key(key, work / "signing.pub")
    log("building v1 (SqueezeNet 1.1), v2 (new classifier), v3 (wrong golden answers), v4 (SqueezeNet 1.0)")
    artifacts = build_artifacts(key, work)
    admin, enroll = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with ExitStack() as stack:
        url = stack.enter_context(private_pg_schema("ota_rollouts"))
        upgrade(url)  # once, before two processes start (each `serve` would otherwise race to migrate)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTA_")},
            "PYTHONPATH": str(ROOT),
            "OTA_DATABASE_URL": url,
            "OTA_STORAGE_URL": f"file://{work / 'blobs'}",
            "OTA_ADMIN_TOKEN": admin,
            "OTA_ENROLLMENT_SECRET": enroll,
            "OTA_PUBLISHER_KEYS": str(work / "signing.pub"),
            "OTA_SECRET_KEY": secrets.token_urlsafe(32),
            "OTA_POLL_INTERVAL": str(POLL_INTERVAL),
            "OTA_ENROLL_RATE": "0",  # the whole simulated fleet enrolls from 127.0.0.1: no enrollment limits
            "OTA_ENROLL_GLOBAL_RATE": "0",
            "OTA_LOG_LEVEL": "WARNING",
        }
        ports = [free_port(), free_port()]
        cluster = Cluster([f"http://127.0.0.1:{p}" for p in ports], {"Authorization": f"Bearer {admin}"})
        for i, port in enumerate(ports):
            cluster.procs.append(
                start(
                    stack, [sys.executable, "-m", "server", "serve", "--port", str(port)], env, work / f"server{i}.log"
                )
            )
        for i in range(2):
            ok = wait_until(
                f"server {i}", lambda i=i: httpx.get(f"{cluster.urls[i]}/readyz").status_code == 200, 90, cluster
            )
            if not ok:
                raise RuntimeError(f"server {i} did not start; see {work / f'server{i}.log'}")
        for version, data in artifacts.items():
            r = httpx.post(
                f"{cluster.urls[version % 2]}/v1/models/{MODEL}/versions",
                content=data,
                headers=cluster.admin,
                timeout=60,
            )
            if r.status_code != 201:
                raise RuntimeError(f"publishing v{version}: {r.status_code} {r.text}")
        cluster.post("/v1/rollouts", {"model": MODEL, "version": 1, "stages": [{"percent": 100}], "min_devices": 0})

        halves = [args.devices // 2, args.devices - args.devices // 2]
        log(f"simulating {args.devices} devices ({halves[0]} + {halves[1]}, one simulator per server), "
            f"{args.inference_rate} inferences/s each; waiting for all of them to serve v1")  # fmt: skip
        reports = []
        for i, (server_url, n) in enumerate(zip(cluster.urls, halves, strict=True)):
            reports.append(work / f"fleet{i}.json")
            cluster.procs.append(
                start(stack, [
                    sys.executable, "-m", "device_agent", "simulate", "--server", server_url, "--model", MODEL,
                    "--trust", str(work / "signing.pub"), f"--enroll-secret={enroll}", "--devices", str(n),
                    "--id-prefix", f"dev{'ab'[i]}", "--model-dir", str(work / f"fleet{i}"),
                    "--poll-interval", str(POLL_INTERVAL), "--timeout", "7200",
                    "--inference-rate", str(args.inference_rate), "--metrics-interval", str(POLL_INTERVAL),
                    "--log-level", "WARNING", "--json",
                ], {**env, "OTA_ENROLLMENT_SECRET": ""}, work / f"fleet{i}.log", stdout=reports[-1])
            )  # fmt: skip
        t0 = time.monotonic()
        if not wait_until("the fleet on v1", lambda: cluster.fleet_versions().get(1, 0) >= args.devices, 900, cluster):
            raise RuntimeError(f"the fleet did not reach v1; see {work}/fleet*.log")
        v1_seconds = time.monotonic() - t0
        log(f"all {args.devices} devices on v1 after {v1_seconds:.0f} s")

        a = run_rollout(cluster, "A (good v2)", 2, args, {"completed", "paused", "aborted"})
        wait_until(
            "the fleet on v2",
            lambda: cluster.fleet_versions().get(2, 0) >= args.devices,
            max(120, 6 * POLL_INTERVAL),
            cluster,
        )
        b = run_rollout(cluster, "B (wrong golden set v3)", 3, args, {"completed", "paused", "aborted"})
        time.sleep(3 * POLL_INTERVAL)  # let the devices in flight finish and the offers be written
        b.rollout = cluster.get(f"/v1/rollouts/{b.rollout['id']}")
        b_fleet = cluster.fleet_versions()
        if b.rollout["state"] not in ("completed", "aborted"):
            cluster.post(f"/v1/rollouts/{b.rollout['id']}/abort", {"reason": "benchmark: scenario B is over"})
        c = run_rollout(cluster, "C (2× slower v4)", 4, args, {"completed", "paused", "aborted"})
        if c.rollout["state"] not in ("completed", "aborted"):
            cluster.post(f"/v1/rollouts/{c.rollout['id']}/abort", {"reason": "benchmark: scenario C is over"})
        c_fleet = cluster.fleet_versions()
        for p in cluster.procs[2:]:
            p.terminate()
        for p in cluster.procs[2:]:
            p.wait(120)
        sims = [json.loads(p.read_text()) for p in reports if p.exists() and p.stat().st_size]

    return report_scenarios(args, v1_seconds, a, b, b_fleet, c, c_fleet, sims)


def report_scenarios(
    args: argparse.Namespace,
    v1_seconds: float,
    a: Outcome,
    b: Outcome,
    b_fleet: dict[int, int],
    c: Outcome,
    c_fleet: dict[int, int],
    sims: list[dict[str, Any]],
) -> tuple[list[str], list[str], dict[str, Any]]:
    lines = [
        f"{args.devices:,} simulated devices (two `device-agent simulate` processes, one per server), two "
        f"`python -m server serve` processes on one PostgreSQL schema; devices poll every {POLL_INTERVAL} s and run "
        f"{args.inference_rate} real inferences/s each (ONNX Runtime, 64 px), sending `metrics` every "
        f"{POLL_INTERVAL} s; the servers judge rollouts every 5 s (`OTA_ROLLOUT_EVAL_SECONDS` default). Every "
        f"rollout: stages 5 → 25 → 100 %, soak {args.soak} s each, `min_devices` 10, gates "
        f"`latency_p95_ratio ≤ 1.5` (min_samples {args.min_samples}) and `validation_failures ≤ 0`. Enrolling and "
        f"installing v1 on the whole fleet took {v1_seconds:.0f} s.",
        "",
        "| scenario | outcome | reason | stage | cohort per stage (cumulative) | offered per stage "
        "| installed / failed | gates | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in (a, b, c):
        r = o.rollout
        cohorts = " / ".join(str(s["cohort"]) for s in r["stages"])
        offered = " / ".join(str(s["counts"]["offered"]) for s in r["stages"])
        inst, failed = r["stages"][-1]["counts"]["installed"], r["stages"][-1]["counts"]["failed"]  # cohorts nest
        gates = "; ".join(f"{g['metric']} {g['value']} ({g['status']}, {g['samples']:,})" for g in r["gates"])
        lines.append(
            f"| {o.name} | **{r['state']}** | {r['reason'] or '—'} | {r['stage'] + 1} of {len(r['stages'])} "
            f"| {cohorts} | {offered} | {inst} / {failed} | {gates} | {o.seconds:.0f} |"
        )
    delays = stage_delays(a.rollout)
    lines += [
        "",
        f"Scenario A, each stage's decision after its soak ended (from the rollout's history; poll interval "
        f"{POLL_INTERVAL} s):",
        "",
        "| stage | soak s | decided after soak end (s) | poll intervals |",
        "|---|---|---|---|",
    ]
    for percent, soak, d in delays:
        lines.append(
            f"| {percent} % | {soak} | {'—' if d is None else f'{d:.1f}'} "
            f"| {'—' if d is None else f'**{d / POLL_INTERVAL:.2f}**'} |"
        )
    per_version: dict[str, dict[str, float]] = {}
    for s in sims:
        for v, t in ((s.get("telemetry") or {}).get("versions") or {}).items():
            agg = per_version.setdefault(v, {"requests": 0, "p95": 0.0, "p50": 0.0})
            agg["requests"] += t["requests"]
            agg["p95"] += t["p95_ms"] * t["requests"]
            agg["p50"] += t["p50_ms"] * t["requests"]
    if per_version:
        lines += [
            "",
            "Inferences the simulated devices served, per version (the simulators' own summaries):",
            "",
            "| version | requests | p50 ms | p95 ms |",
            "|---|---|---|---|",
        ]
        for v, agg in sorted(per_version.items()):
            n = max(1, agg["requests"])
            lines.append(f"| {v} | {agg['requests']:,.0f} | {agg['p50'] / n:.2f} | {agg['p95'] / n:.2f} |")

    ar, br, cr = a.rollout, b.rollout, c.rollout
    decided = [d for _, _, d in delays]
    a_ok = ar["state"] == "completed" and all(d is not None and d <= 2 * POLL_INTERVAL for d in decided)
    worst = max((d for d in decided if d is not None), default=float("nan"))
    first_cohort = br["stages"][0]["cohort"]
    b_offered = br["stages"][-1]["counts"]["offered"]  # the last stage's cohort holds every earlier one
    b_on_v3 = b_fleet.get(3, 0)
    b_ok = br["state"] == "paused" and br["stage"] == 0 and b_offered <= first_cohort and b_on_v3 == 0
    c_ok = cr["state"] == "paused" and cr["reason"] == "gate:latency_p95_ratio"
    c_gate = next((g for g in cr["gates"] if g["metric"] == "latency_p95_ratio"), {})
    c_on_v4 = c_fleet.get(4, 0)
    verdicts = [
        f"- A: {'PASS' if a_ok else 'FAIL'} — the good v2 went 5 → 25 → 100 % and {ar['state']}; every stage "
        f"decided ≤ {worst:.1f} s = {worst / POLL_INTERVAL:.2f} poll intervals after its soak ended (goal ≤ 2).",
        f"- B: {'PASS' if b_ok else 'FAIL'} — v3 (wrong golden answers) {br['state']} ({br['reason']}) at stage "
        f"{br['stage'] + 1}; offered to {b_offered} devices, first stage's cohort {first_cohort} (goal ≤ cohort + in "
        f"flight); devices serving v3: {b_on_v3}.",
        f"- C: {'PASS' if c_ok else 'FAIL'} — v4 (SqueezeNet 1.0) {cr['state']} ({cr['reason']}) at stage "
        f"{cr['stage'] + 1}, latency_p95_ratio {c_gate.get('value')} over {c_gate.get('samples', 0):,} samples "
        f"(limit 1.5); {c_on_v4} devices run v4 (the canaries), the rest stay on v2.",
    ]
    return lines, verdicts, {"a": a_ok, "b": b_ok, "c": c_ok}
