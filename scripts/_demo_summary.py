"""The demo's summary: fp32 vs compressed side by side, what the device downloaded, each rollout's outcome.

Sizes come from the artifacts the demo signed (payload = the bytes on the air), the server (its delta v1 → v2)
and the real agent's own record of its installs (`GET /status`: source and bytes actually downloaded).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
from _demo_fleet import Api, fleet_text, stages_text
from _demo_procs import PredictLoad

import artifact as A

# The artifacts the demo writes, by key: the fp32 parent is packaged for comparison only, never published.
ARTIFACTS = {"fp32": "shapes-v1-fp32.otam", "v1": "shapes-v1.otam", "v2": "shapes-v2.otam", "v3": "shapes-v3.otam"}
WHAT = {
    "fp32": "fp32 SqueezeNet 1.1 (not shipped)",
    "v1": "v1 = fp32 compressed",
    "v2": "v2 fine-tune, compressed",
    "v3": "v3 SqueezeNet 1.0 (fp32)",
}


def _models(work: Path) -> dict[str, dict[str, Any]]:
    """Per artifact: payload bytes (on the air), val accuracy and the compression the manifest states."""
    out: dict[str, dict[str, Any]] = {}
    for key, name in ARTIFACTS.items():
        manifest = A.parse_manifest(A.read_artifact((work / name).read_bytes()).manifest_bytes)
        m = manifest.metrics
        out[key] = {
            "payload_bytes": manifest.payload.length,
            "accuracy": float(m["accuracy"]),
            "density": float(m.get("density", 1.0)),
            "bits": int(m.get("bits", 32)),
        }
    return out


def _agent_installs(predict: str) -> list[dict[str, Any]]:
    """What the real agent downloaded for each install (source `full` or `delta`, bytes), from its /status."""
    with contextlib.suppress(httpx.HTTPError, ValueError):
        installs = httpx.get(f"{predict}/status", timeout=5).json().get("installs") or []
        return [{k: i.get(k) for k in ("version", "source", "bytes", "payload_bytes")} for i in installs]
    return []


def _size_lines(models: dict[str, dict[str, Any]], delta: int | None, installs: list[dict[str, Any]]) -> list[str]:
    fp32, v1 = models["fp32"], models["v1"]
    rows = []
    for key, m in models.items():
        size = f"{m['payload_bytes']:>11,} B"
        note = ""
        if key == "v1":
            note = (
                f"{fp32['payload_bytes'] / m['payload_bytes']:.1f}x smaller, {m['density']:.0%} of the weights kept, "
                f"{m['bits']} bits; {(m['accuracy'] - fp32['accuracy']) * 100:+.2f} points vs fp32"
            )
        elif key == "v2":
            note = "delta from v1: " + (
                "not built" if delta is None else f"{delta:,} B ({delta / m['payload_bytes']:.1%} of its full payload)"
            )
        rows.append(f"{WHAT[key]:<34} {size}   {m['accuracy']:>7.2%}   {note}".rstrip())
    agent = "; ".join(f"v{i['version']} {i['source']} {i['bytes']:,} B" for i in installs) or "nothing recorded"
    return [
        f"{'model':<34} {'on the air':>13}   {'val acc':>7}",
        *rows,
        f"demo-device-1 downloaded          {agent}",
        f"fp32 vs compressed: {fp32['payload_bytes']:,} B at {fp32['accuracy']:.2%} -> "
        f"{v1['payload_bytes']:,} B at {v1['accuracy']:.2%}",
    ]


def _rollout_lines(rollouts: list[dict[str, Any] | None]) -> list[str]:
    lines = [
        f"{'rollout':<8} {'version':<8} {'stages':<22} {'outcome':<10} {'reason':<24} counts (the stage it ended in)"
    ]
    for r in rollouts:
        if r is None:
            continue
        stage = r["stages"][r["stage"]]
        c = stage["counts"]
        lines.append(
            f"{r['id']:<8} {'v' + str(r['version']):<8} {stages_text(r):<22} {r['state']:<10} "
            f"{r.get('reason') or '-':<24} "
            f"stage {r['stage'] + 1} ({stage['percent']} %): cohort {stage['cohort']}, {c['installed']} installed, "
            f"{c['failed']} failed, {c['pending']} pending"
        )
        for g in r.get("gates", []):
            lines.append(
                f"{'':<8} gate {g['metric']} = {g['value']} (threshold {g['threshold']}): {g['status']}; "
                f"{g['detail']}; {g['samples']:,} samples"
            )
        halted = [h for h in r["history"] if h["event"] == "halted"]
        if halted:
            lines.append(f"{'':<8} halted: {halted[-1]['detail']}")
    return lines


def summary(
    work: Path, api: Api, load: PredictLoad, predict: str, fleet_report: Path, elapsed: float
) -> dict[str, Any]:
    """{"text": what to print, "json": summary.json, "ok": whether the story went as told}."""
    models = _models(work)
    delta = api.delta_length(2, 1)
    installs = _agent_installs(predict)
    report: dict[str, Any] = {}
    with contextlib.suppress(json.JSONDecodeError, OSError):
        report = json.loads(fleet_report.read_text() or "{}")
    rollouts = [api.rollout_of(v) for v in (1, 2, 3)]
    fleet = api.fleet()
    v3 = rollouts[2] or {}
    canaries = v3["stages"][0]["cohort"] if v3 else 0
    on_v3 = fleet.get(3, 0)
    got = {i["version"]: i for i in installs}
    story = {
        "v1_completed": bool(rollouts[0]) and rollouts[0]["state"] == "completed",  # type: ignore[index]
        "v1_shipped_compressed": models["v1"]["payload_bytes"] * 4 < models["fp32"]["payload_bytes"]
        and got.get(1, {}).get("bytes") == models["v1"]["payload_bytes"],
        "v2_completed_in_stages": bool(rollouts[1])
        and rollouts[1]["state"] == "completed"  # type: ignore[index]
        and sum(h["event"] == "stage_advanced" for h in rollouts[1]["history"]) == 2,  # type: ignore[index]
        "v2_shipped_as_delta": got.get(2, {}).get("source") == "delta" and got[2].get("bytes") == delta,
        "v3_halted_by_latency": v3.get("state") == "paused" and v3.get("reason") == "gate:latency_p95_ratio",
        "fleet_on_v2_but_canaries": on_v3 <= canaries and fleet.get(2, 0) + on_v3 == sum(fleet.values()),
    }
    lines = [
        *_size_lines(models, delta, installs),
        "",
        *_rollout_lines(rollouts),
        "",
        f"fleet at the end {fleet_text(fleet)}   ({on_v3} on v3 of the {canaries} devices in v3's first stage)",
    ]
    if report:
        lines.append(
            f"simulated fleet {report.get('devices', '?')} devices; bytes {report.get('bytes', {})}; "
            f"without deltas {report.get('full_payload_bytes', '?')} B; swap median {report.get('swap_ms_median')} ms"
        )
        t = report.get("telemetry") or {}
        if t:
            lines.append(
                f"inferences      {t.get('served', 0):,} served by the simulated devices and reported as metrics"
            )
    lines += [
        f"predict load    {load.ok:,} requests answered, failed requests = {load.failed}, "
        f"versions seen {sorted(load.versions)}",
        f"server          {api.url}   (API docs at {api.url}/docs)",
        f"dashboard       {api.url}/   (sign in with the admin token)",
        f"total time      {elapsed:.0f} s",
    ]
    missed = [name for name, ok in story.items() if not ok]
    if missed:
        lines.append(f"not as told     {', '.join(missed)}")
    fleet_ok = bool(report.get("ok", False))
    doc = {
        "models": models,
        "delta_v1_v2_bytes": delta,
        "agent_installs": installs,
        "rollouts": rollouts,
        "fleet": {("none" if v is None else f"v{v}"): n for v, n in fleet.items()},
        "story": story,
        "fleet_report_ok": fleet_ok,
        "fleet_bytes": report.get("bytes", {}),
        "predict": {"ok": load.ok, "failed": load.failed, "versions": sorted(load.versions)},
        "elapsed_s": round(elapsed, 1),
    }
    return {"text": "\n".join(lines), "json": doc, "ok": fleet_ok and all(story.values())}
