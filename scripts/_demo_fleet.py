"""What the demo reads from the server (fleet, rollouts, a version's deltas) and how it prints rollouts as they go."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from _demo_procs import Processes, run, wait_for

MODEL = "shapes"


class Api:
    """The few admin reads the demo makes."""

    def __init__(self, url: str, admin: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {admin}"}

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def fleet(self) -> dict[int | None, int]:
        """Devices per version (None: none installed yet) of the demo's model."""
        for entry in self.get("/v1/fleet").get("models", []):
            if entry.get("model") == MODEL:
                return {v.get("version"): int(v.get("devices", 0)) for v in entry.get("versions", [])}
        return {}

    def rollout_of(self, version: int) -> dict[str, Any] | None:
        for r in self.get(f"/v1/rollouts?model={MODEL}&limit=200"):
            if r["version"] == version:
                return self.get(f"/v1/rollouts/{r['id']}")  # type: ignore[no-any-return]
        return None

    def delta_length(self, version: int, from_version: int) -> int | None:
        """The server's delta from `from_version` to `version` (None until it is built)."""
        for d in self.get(f"/v1/models/{MODEL}/versions/{version}").get("deltas", []):
            if d.get("from_version") == from_version and d.get("status") == "ready":
                return int(d["length"])
        return None


def stages_text(r: dict[str, Any]) -> str:
    return " → ".join(f"{s['percent']} %" for s in r["stages"])


def gates_text(r: dict[str, Any]) -> str:
    parts = []
    for g in r.get("gates", []):
        value = "–" if g["value"] is None else f"{g['value']:.2f}"
        parts.append(f"{g['metric']} {value} ({g['status']}, {g['samples']:,} samples)")
    return "; ".join(parts) or "no gates"


def rollout_line(r: dict[str, Any]) -> str:
    """`rollout 2 v2 | stage 1/3 10 % running | cohort 7: 5 installed, 0 failed, 2 pending, 0 not reached | …`"""
    stage = r["stages"][r["stage"]]
    c = stage["counts"]
    state = r["state"] + (f" ({r['reason']})" if r.get("reason") else "")
    return (
        f"rollout {r['id']} v{r['version']} | stage {r['stage'] + 1}/{len(r['stages'])} {stage['percent']} % {state} | "
        f"cohort {stage['cohort']}: {c['installed']} installed, {c['failed']} failed, {c['pending']} pending, "
        f"{c['not_reached']} not reached | {gates_text(r)}"
    )


def fleet_text(versions: dict[int | None, int]) -> str:
    return "  ".join(f"{'none' if v is None else f'v{v}'}: {n}" for v, n in sorted(versions.items(), key=str))


def watch_rollout(api: Api, version: int, until: set[str], timeout: float, procs: Processes) -> dict[str, Any]:
    """Print the rollout's progress (a line on each change, else every 10 s) until it is in one of `until`."""
    shown, last_at = "", 0.0
    final: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal shown, last_at, final
        r = api.rollout_of(version)
        if r is None:
            return False
        line = rollout_line(r)
        key = line.split(" | ", 3)[:3]  # stage, state and counts: gate values move all the time
        if str(key) != shown or time.monotonic() - last_at >= 10:
            print(f"    {line}   fleet {fleet_text(api.fleet())}", flush=True)
            shown, last_at = str(key), time.monotonic()
        final = r
        return bool(r["state"] in until)

    wait_for(f"the rollout of v{version} to end ({' or '.join(sorted(until))})", settled, timeout, procs)
    return final


def publish(mb: list[str], artifact: Path, url: str, admin: str, rollout: list[str]) -> None:
    done = run([*mb, "publish", str(artifact), "--server", url, f"--token={admin}", "--quiet", *rollout],
               capture_output=True)  # fmt: skip
    for line in done.stdout.splitlines():
        print(f"    {line}", flush=True)
