"""`make demo`: the whole OTA slice on embedded defaults (SQLite, local blob storage), as a rollout story.

  1. generate the shapes data set and train SqueezeNet 1.1 v1 (progress shown)
  2. make a signing key, package and sign v1
  3. start the server, publish v1 with an immediate rollout (`--rollout 100`): it is the baseline at once
  4. start one real device agent serving /predict (a client calls it from here on) and a simulated
     fleet; every simulated device runs real inferences and reports its measured latency and
     confidence (`metrics` events), which the gates read
  5. fine-tune v2 (classifier only), publish it with a staged rollout 10 → 50 → 100 % (short soaks,
     gate `latency_p95_ratio<=1.5`): it advances by itself, stage by stage, over deltas (not one
     /predict request may fail across the agent's hot swap)
  6. train v3 on SqueezeNet 1.0 instead of 1.1 (valid, signed, passes its golden set, about twice as
     slow) and publish it with the same rollout: the latency gate halts it at the first stage, and
     the fleet stays on v2 except the canaries
  7. print a summary; keep the server and the agent running until Ctrl-C (or exit at once with DEMO_EXIT=1)

Knobs (environment): DEMO_DIR (./demo-data), DEMO_PORT (8000), DEMO_FLEET (50), DEMO_PER_CLASS,
DEMO_EPOCHS (v1), DEMO_FT_EPOCHS (v2), DEMO_V3_EPOCHS (v3), DEMO_IMAGE_SIZE, DEMO_SOAK (seconds per
stage), DEMO_MIN_SAMPLES (the gate's), DEMO_RATE (inferences per second per simulated device),
DEMO_PREDICT_RATE (the /predict client's requests per second), DEMO_EXIT. Every process it starts, it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "shapes"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


STARTED = time.monotonic()


def say(msg: str) -> None:
    msg = f"[{time.monotonic() - STARTED:4.0f} s] {msg}"
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


class DemoError(Exception):
    pass


class Processes:
    """Every background process the demo starts; all are stopped on exit, whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, stdout: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        out = stdout.open("wb") if stdout else log
        proc = subprocess.Popen(argv, stdout=out, stderr=log, env={**os.environ, **(env or {})}, start_new_session=True)
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """SIGTERM one process and wait for it (the fleet prints its report when told to stop)."""
        self.running = [(n, p) for n, p in self.running if p is not proc]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.running):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, text=True, **kw)
    if result.returncode != 0:
        raise DemoError(f"step failed ({result.returncode}): {' '.join(argv)}\n{result.stderr or ''}")
    return result


def wait_for(what: str, check: Callable[[], bool], timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.running:
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with status {proc.returncode}; see {procs.logs / (name + '.log')}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port(preferred: int) -> int:
    """`preferred` if it is free (0: any), else one the kernel picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free TCP port on 127.0.0.1")


class PredictLoad(threading.Thread):
    """A client calling /predict at a steady rate, counting every answer that is not a 200."""

    def __init__(self, url: str, image: bytes, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.image, self.period = url, image, 1.0 / rate
        self.ok = self.failed = 0
        self.versions: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, content=self.image, headers={"Content-Type": "image/png"})
                    if r.status_code == 200:
                        self.ok += 1
                        self.versions.add(int(r.json()["version"]))
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                next_at = max(next_at + self.period, time.monotonic() - 1.0)
                self.stop.wait(max(0.0, next_at - time.monotonic()))


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


def main() -> int:
    work = Path(os.environ.get("DEMO_DIR", ROOT / "demo-data")).resolve()
    fleet_size = env_int("DEMO_FLEET", 50)
    epochs, ft_epochs, v3_epochs = (
        env_int("DEMO_EPOCHS", 30),
        env_int("DEMO_FT_EPOCHS", 2),
        env_int("DEMO_V3_EPOCHS", 2),
    )
    soak, min_samples = env_int("DEMO_SOAK", 20), env_int("DEMO_MIN_SAMPLES", 300)
    rate, predict_rate = env_int("DEMO_RATE", 10), env_int("DEMO_PREDICT_RATE", 20)
    exit_after = os.environ.get("DEMO_EXIT") == "1"
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    procs = Processes(work / "logs")
    mb = [str(BIN / "model-builder")]
    staged = ["--rollout", "10,50,100", "--soak", str(soak), "--gate", f"latency_p95_ratio<=1.5@{min_samples}"]
    started = time.monotonic()
    try:
        say(f"1/7 generating the shapes data set and training v1, SqueezeNet 1.1 ({epochs} epochs) in {work}")
        dataset = [*mb, "make-dataset", "shapes", "--out", str(work / "data"), "--seed", "0"]
        if os.environ.get("DEMO_PER_CLASS"):
            dataset += ["--per-class", os.environ["DEMO_PER_CLASS"]]
        size = os.environ.get("DEMO_IMAGE_SIZE")
        if size:
            dataset += ["--size", size]
        run(dataset)
        train = [*mb, "train", "--data", str(work / "data"), "--epochs", str(epochs), "--seed", "0"]
        if size:
            train += ["--image-size", size]
        run([*train, "--out", str(work / "run-v1")])

        say("2/7 signing key, package v1")
        run([*mb, "keygen", "--out", str(work / "keys")])
        key, pub = work / "keys" / "signing.key", work / "keys" / "signing.pub"
        package = [*mb, "package", "--name", MODEL, "--key", str(key)]
        run([*package[:2], str(work / "run-v1"), *package[2:], "--version", "1", "--out", str(work / "shapes-v1.otam")])

        say("3/7 starting the server (SQLite, local storage); publishing v1 with an immediate rollout")
        port = free_port(env_int("DEMO_PORT", 8000))
        url = f"http://127.0.0.1:{port}"
        admin, enroll = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        server_env = {
            "OTA_DATABASE_URL": f"sqlite:///{work / 'ota.db'}",
            "OTA_STORAGE_URL": f"file://{work / 'blobs'}",
            "OTA_ADMIN_TOKEN": admin,
            "OTA_ENROLLMENT_SECRET": enroll,
            "OTA_PUBLISHER_KEYS": str(pub),
            "OTA_POLL_INTERVAL": "2",
            "OTA_ENROLL_RATE": "0",  # the whole simulated fleet enrolls from 127.0.0.1: no enrollment limits
            "OTA_ENROLL_GLOBAL_RATE": "0",
            "OTA_ROLLOUT_EVAL_SECONDS": "1",  # a demo's soaks are seconds long; a fleet's, minutes
            "OTA_SEEN_FLUSH_SECONDS": "1",
        }
        procs.start("server", [str(BIN / "ota-server"), "serve", "--port", str(port)], server_env)
        wait_for("the server to be ready", lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 60, procs)
        api = Api(url, admin)
        publish(mb, work / "shapes-v1.otam", url, admin, ["--rollout", "100"])

        # The gates read the simulated fleet. The real agent measures the wall time of what it serves, on a
        # host it shares with the server, the fleet and the trainer: its p95 here is that host's load (5-10x
        # the simulated devices', which measure CPU time). Gates pool every device's samples, weighted by
        # requests, so its 20 requests a second would drag whichever version it runs; it reports hourly.
        say(f"4/7 starting a device agent serving /predict and a simulated fleet of {fleet_size}, "
            f"each device running {rate} inferences/s and reporting metrics")  # fmt: skip
        agent_port = free_port(port + 1)
        procs.start("agent", [
            str(BIN / "device-agent"), "run", "--server", url, "--model", MODEL, "--model-dir", str(work / "device-1"),
            "--trust", str(pub), f"--enroll-secret={enroll}", "--device-id", "demo-device-1",
            "--serve", f"127.0.0.1:{agent_port}", "--poll-interval", "1", "--metrics-interval", "3600",
        ])  # fmt: skip
        fleet_report = work / "fleet-report.json"
        fleet = procs.start("fleet", [
            str(BIN / "device-agent"), "simulate", "--server", url, "--model", MODEL, "--trust", str(pub),
            f"--enroll-secret={enroll}", "--devices", str(fleet_size), "--timeout", "3600",
            "--poll-interval", "2", "--model-dir", str(work / "fleet"), "--json",
            "--inference-rate", str(rate), "--metrics-interval", "5",
        ], stdout=fleet_report)  # fmt: skip
        predict = f"http://127.0.0.1:{agent_port}"
        devices = fleet_size + 1

        def agent_on(version: int) -> bool:
            return bool(httpx.get(f"{predict}/status", timeout=2).json().get("version") == version)

        wait_for("the device agent to serve v1", lambda: agent_on(1), 300, procs)
        wait_for(f"{devices} devices to run v1", lambda: api.fleet().get(1, 0) >= devices, 600, procs)
        sample = next((work / "data" / "val").rglob("*.png")).read_bytes()
        load = PredictLoad(f"{predict}/predict", sample, predict_rate)
        load.start()
        print(f"    fleet {fleet_text(api.fleet())}; a client calls {predict}/predict {predict_rate} times a second")

        say(f"5/7 fine-tuning v2 (classifier only, {ft_epochs} epochs); publishing it with a staged rollout")
        run([*train[:-2], "--epochs", str(ft_epochs), "--init", str(work / "run-v1"), "--freeze-features",
             "--lr", "3e-4", "--seed", "1", "--out", str(work / "run-v2"), "--no-progress"],
            capture_output=True)  # fmt: skip
        run([*package[:2], str(work / "run-v2"), *package[2:], "--version", "2", "--parent-version", "1",
             "--out", str(work / "shapes-v2.otam")])  # fmt: skip
        publish(mb, work / "shapes-v2.otam", url, admin, staged)
        v2 = watch_rollout(api, 2, {"completed", "paused", "aborted"}, 900, procs)
        if v2["state"] != "completed":
            raise DemoError(f"the rollout of v2 ended {v2['state']} ({v2.get('reason')}), not completed")
        wait_for("the device agent to serve v2", lambda: agent_on(2), 300, procs)
        wait_for(f"{devices} devices to run v2", lambda: api.fleet().get(2, 0) >= devices, 600, procs)
        print(f"    fleet {fleet_text(api.fleet())}; /predict: {load.ok:,} requests answered, {load.failed} failed")

        say(f"6/7 training v3 on SqueezeNet 1.0 ({v3_epochs} epochs from scratch): valid and signed, but about "
            "twice as slow; publishing it with the same rollout")  # fmt: skip
        run([*train[:-2], "--epochs", str(v3_epochs), "--arch", "squeezenet1_0", "--seed", "2",
             "--out", str(work / "run-v3"), "--no-progress"], capture_output=True)  # fmt: skip
        run([*package[:2], str(work / "run-v3"), *package[2:], "--version", "3", "--out", str(work / "shapes-v3.otam")])
        publish(mb, work / "shapes-v3.otam", url, admin, staged)
        v3 = watch_rollout(api, 3, {"completed", "paused", "aborted"}, 900, procs)
        if v3["state"] == "paused":  # the canaries offered v3 before the halt finish installing it

            def canaries_settled() -> bool:
                r = api.rollout_of(3)
                return r is not None and r["stages"][0]["counts"]["pending"] == 0

            wait_for("v3's canaries to settle", canaries_settled, 300, procs)
            time.sleep(3.0)  # a few more polls: nothing new is offered
        load.stop.set()
        load.join(15)
        procs.stop(fleet)

        say("7/7 summary")
        summary = _summary(work, api, load, fleet_report, time.monotonic() - started)
        print(summary["text"], flush=True)
        (work / "summary.json").write_text(json.dumps(summary["json"], indent=1))
        ok = load.failed == 0 and summary["ok"]
        if not ok:
            print("demo: the story did not go as told; see the summary above and the logs in " + str(work / "logs"))
        if exit_after:
            return 0 if ok else 1
        print(f"\nStill running: server {url} (admin token {admin}), device {predict}/status.")
        print(f"Try: curl -s -H 'Authorization: Bearer {admin}' {url}/v1/rollouts/{v3['id']}")
        print(f"Ops dashboard: open {url}/ and sign in with the admin token {admin}")
        print("Press Ctrl-C to stop every process the demo started.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0 if ok else 1
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()


def _summary(work: Path, api: Api, load: PredictLoad, fleet_report: Path, elapsed: float) -> dict[str, Any]:
    import artifact as A

    files = {v: work / f"shapes-v{v}.otam" for v in (1, 2, 3)}
    parsed = {v: A.read_artifact(f.read_bytes()) for v, f in files.items()}
    manifests = {v: A.parse_manifest(p.manifest_bytes) for v, p in parsed.items()}
    onnx = {
        v: A.decode_payload(p.payload, encoding=manifests[v].payload.encoding, max_length=manifests[v].onnx.length)
        for v, p in parsed.items()
        if v in (1, 2)
    }
    delta = A.make_delta(onnx[1], onnx[2])
    report: dict[str, Any] = {}
    with contextlib.suppress(json.JSONDecodeError, OSError):
        report = json.loads(fleet_report.read_text() or "{}")
    rollouts = [api.rollout_of(v) for v in (1, 2, 3)]
    fleet = api.fleet()
    v3 = rollouts[2] or {}
    canaries = v3["stages"][0]["cohort"] if v3 else 0
    on_v3 = fleet.get(3, 0)
    story = {
        "v1_completed": bool(rollouts[0]) and rollouts[0]["state"] == "completed",  # type: ignore[index]
        "v2_completed_in_stages": bool(rollouts[1])
        and rollouts[1]["state"] == "completed"  # type: ignore[index]
        and sum(h["event"] == "stage_advanced" for h in rollouts[1]["history"]) == 2,  # type: ignore[index]
        "v3_halted_by_latency": v3.get("state") == "paused" and v3.get("reason") == "gate:latency_p95_ratio",
        "fleet_on_v2_but_canaries": on_v3 <= canaries and fleet.get(2, 0) + on_v3 == sum(fleet.values()),
    }
    lines = [
        "accuracy        " + "   ".join(f"v{v} {m.metrics['accuracy']:.2%}" for v, m in manifests.items()),
        "artifact        " + "   ".join(f"v{v} {f.stat().st_size:,} B" for v, f in files.items()),
        f"delta v1→v2     {len(delta):,} B ({len(delta) / manifests[2].payload.length:.1%} of the v2 payload)",
        "",
        f"{'rollout':<8} {'version':<8} {'stages':<22} {'outcome':<10} {'reason':<24} counts (the stage it ended in)",
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
    lines += [
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
    fleet_ok = bool(report.get("ok", False))
    doc = {
        "rollouts": rollouts,
        "fleet": {("none" if v is None else f"v{v}"): n for v, n in fleet.items()},
        "story": story,
        "fleet_report_ok": fleet_ok,
        "predict": {"ok": load.ok, "failed": load.failed, "versions": sorted(load.versions)},
        "elapsed_s": round(elapsed, 1),
    }
    return {"text": "\n".join(lines), "json": doc, "ok": fleet_ok and all(story.values())}


if __name__ == "__main__":
    sys.exit(main())
