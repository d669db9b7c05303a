"""`make demo`: the whole OTA slice on embedded defaults (SQLite, local blob storage), as a rollout story.

  1. generate the shapes data set and train SqueezeNet 1.1 in fp32 (progress shown)
  2. Deep Compression of that run (prune to 33 %, 6-bit shared weights, fine-tune): v1, ~0.24 MB on the air
  3. build the next two releases while the CPUs are free, as a release pipeline would: v2 fine-tuned
     from v1 (classifier only) and compressed from v1's masks and codebooks (`--init-from`), so it
     differs from v1 in a few kB; v3 trained on SqueezeNet 1.0 instead of 1.1 (valid, signed, passes
     its golden set, about twice as slow)
  4. make a signing key; package v1, v2, v3 (and the fp32 run, for comparison only: never published)
  5. start the server, publish v1 with an immediate rollout (`--rollout 100`): the fleet downloads it once
  6. start one real device agent serving /predict (a client calls it from here on) and a simulated
     fleet; every simulated device runs real inferences and reports its measured latency and
     confidence (`metrics` events), which the gates read
  7. publish v2, wait for the server's delta, then roll it out 10 → 50 → 100 % (short soaks, gate
     `latency_p95_ratio<=1.5`): it advances by itself, stage by stage, over deltas (not one /predict
     request may fail across the agent's hot swap)
  8. publish v3 with the same rollout: the latency gate halts it at the first stage, and the fleet
     stays on v2 except the canaries
  then print a summary (fp32 vs compressed: size on the air and accuracy; v2's delta; each rollout); keep the
     server and the agent running until Ctrl-C (or exit at once with DEMO_EXIT=1)

Knobs (environment): DEMO_DIR (./demo-data), DEMO_PORT (8000), DEMO_FLEET (50), DEMO_PER_CLASS (500),
DEMO_EPOCHS (fp32 training), DEMO_BATCH (fp32 training and v1's compression), DEMO_COMPRESS_STEPS
(v1's `compress --finetune-steps`), DEMO_FT_EPOCHS (v2's fine-tune), DEMO_V2_COMPRESS_STEPS (v2's
`compress --finetune-steps`), DEMO_MAX_LOSS (passed to compress as `--max-loss` when set), DEMO_V3_EPOCHS
and DEMO_V3_PER_CLASS (v3's training and its own data set), DEMO_IMAGE_SIZE, DEMO_SOAK (seconds per stage),
DEMO_MIN_SAMPLES (the gate's), DEMO_RATE (inferences per second per simulated device),
DEMO_PREDICT_RATE (the /predict client's requests per second), DEMO_THREADS (torch's, see
Knobs.thread_flags), DEMO_EXIT. Every process it starts, it stops.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx
from _demo_fleet import MODEL, Api, fleet_text, publish, watch_rollout
from _demo_procs import (
    BIN,
    DemoError,
    PredictLoad,
    Processes,
    env_float,
    env_int,
    free_port,
    run,
    run_all,
    say,
    wait_for,
)
from _demo_procs import server_env as local_server_env
from _demo_summary import summary

ROOT = Path(__file__).resolve().parent.parent


class Knobs:
    """The environment's knobs, read (and refused by name when malformed) before any work."""

    def __init__(self) -> None:
        self.work = Path(os.environ.get("DEMO_DIR", ROOT / "demo-data")).resolve()
        self.fleet = env_int("DEMO_FLEET", 50)
        self.per_class = env_int("DEMO_PER_CLASS", 400)
        self.size = env_int("DEMO_IMAGE_SIZE", 0)
        # The demo trains briefly to fit 10 minutes on a 2-core AVX2 machine (≈ 250 img/s): its accuracy is an
        # illustration (the compression bench measures compression at full training). Batches of 32 learn more
        # per image than 64 on this data set (15 epochs: 83.7 % vs 67.7 %) for a sixth more time per image;
        # at 30 epochs of 64 the fp32 training alone took 7.5 min there. A higher learning rate (1e-3) stayed at
        # chance for 4 epochs: this BatchNorm-free net needs the gentle one.
        self.batch = env_int("DEMO_BATCH", 32)  # fp32 training and v1's compression
        self.epochs = env_int("DEMO_EPOCHS", 14)
        # v1: 800 masked + 266 centroid steps of 32 (compress's own floor is 1,000 + 333).
        self.compress_steps = env_int("DEMO_COMPRESS_STEPS", 800)
        self.ft_epochs = env_int("DEMO_FT_EPOCHS", 1)
        # v2 starts from v1's masks and codebooks and differs only in its classifier: a few steps settle it.
        self.v2_compress_steps = env_int("DEMO_V2_COMPRESS_STEPS", 60)
        # v3 exists to be slow: it trains one epoch on a small set of its own (its accuracy is not the point).
        self.v3_epochs, self.v3_per_class = env_int("DEMO_V3_EPOCHS", 1), env_int("DEMO_V3_PER_CLASS", 30)
        self.max_loss = env_float("DEMO_MAX_LOSS")
        self.soak, self.min_samples = env_int("DEMO_SOAK", 8), env_int("DEMO_MIN_SAMPLES", 300)
        self.rate, self.predict_rate = env_int("DEMO_RATE", 10), env_int("DEMO_PREDICT_RATE", 20)
        self.port = env_int("DEMO_PORT", 8000)
        self.threads = env_int("DEMO_THREADS", 0)
        self.busy_at_start = os.getloadavg()[0] >= (os.cpu_count() or 1)  # others' load, before the demo's own
        self.exit_after = os.environ.get("DEMO_EXIT") == "1"

    def compress_flags(self, finetune_steps: int, threads: list[str]) -> list[str]:
        flags = ["--finetune-steps", str(finetune_steps), *threads]
        return flags + (["--max-loss", f"{self.max_loss:g}"] if self.max_loss is not None else [])

    def thread_flags(self) -> list[str]:
        """`--threads` for torch: DEMO_THREADS if set; else 1 where the CPUs were already busy when the demo
        started (others' load at the core count: read later, the load average would count the demo's own
        training and halve its compression's speed), else torch's own choice (one per core). Two OpenMP
        threads on 2 busy cores starve each other: training measured 6 img/s with 2 threads vs 65 img/s with
        1 at load 17. Every model is built before the fleet starts, so none is built beside its inferences."""
        if self.threads:
            return ["--threads", str(self.threads)]
        return ["--threads", "1"] if self.busy_at_start else []


def main() -> int:
    procs: Processes | None = None
    signal.signal(signal.SIGTERM, _interrupted)  # `kill` stops every process the demo started, as Ctrl-C does
    try:
        k = Knobs()
        if k.work.exists():
            shutil.rmtree(k.work)
        (k.work / "logs").mkdir(parents=True)
        procs = Processes(k.work / "logs")
        return story(k, procs)
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if procs is not None:
            procs.stop_all()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def story(k: Knobs, procs: Processes) -> int:
    work = k.work
    mb = [str(BIN / "model-builder")]
    staged = ["--rollout", "10,50,100", "--soak", str(k.soak), "--gate", f"latency_p95_ratio<=1.5@{k.min_samples}"]
    started = time.monotonic()
    sized = ["--image-size", str(k.size)] if k.size else []

    say(f"1/8 generating the shapes data set ({k.per_class} images per class) and training SqueezeNet 1.1 in fp32 "
        f"({k.epochs} epochs, batches of {k.batch}) in {work}")  # fmt: skip
    dataset = [*mb, "make-dataset", "shapes", "--out", str(work / "data"), "--seed", "0",
               "--per-class", str(k.per_class)]  # fmt: skip
    run(dataset + (["--size", str(k.size)] if k.size else []))
    train = [*mb, "train", "--data", str(work / "data"), "--seed", "0", *sized]
    alone = k.thread_flags()
    if alone:
        print(
            f"    the CPUs are busy (load average {os.getloadavg()[0]:.1f}): torch runs {alone[1]} thread", flush=True
        )
    batch = ["--batch-size", str(k.batch)]
    run([*train, "--epochs", str(k.epochs), *batch, "--out", str(work / "run-fp32"), *alone])

    say("2/8 Deep Compression of the fp32 run into v1: prune to 33 %, share weights in 6-bit codebooks, fine-tune")
    run([*mb, "compress", str(work / "run-fp32"), "--out", str(work / "run-v1"), "--density", "0.33", "--bits", "6",
         *batch, *k.compress_flags(k.compress_steps, alone), "--no-progress"])  # fmt: skip

    # The next two releases are built now, while the CPUs are free, as a release pipeline builds ahead of its
    # rollouts: beside the fleet's inferences, torch gets one thread and they took twice as long.
    say(f"3/8 building the next releases: v2 fine-tuned from v1 (classifier only, {k.ft_epochs} epochs) and compressed "
        f"from v1's masks and codebooks (--init-from), so it differs from v1 in a few kB; v3 on SqueezeNet 1.0 "
        f"({k.v3_epochs} epoch(s) from scratch on {k.v3_per_class} images per class): valid and signed, but about "
        "twice as slow")  # fmt: skip
    run([*train, "--epochs", str(k.ft_epochs), "--init", str(work / "run-v1"), "--freeze-features",
         "--lr", "3e-4", "--seed", "1", "--out", str(work / "run-v2-ft"), "--no-progress", *alone],
        capture_output=True)  # fmt: skip
    run([*mb, "compress", str(work / "run-v2-ft"), "--out", str(work / "run-v2"), "--init-from", str(work / "run-v1"),
         *k.compress_flags(k.v2_compress_steps, alone), "--no-progress"], capture_output=True)  # fmt: skip
    run([*mb, "make-dataset", "shapes", "--out", str(work / "data-v3"), "--seed", "2", "--per-class",
         str(k.v3_per_class), *(["--size", str(k.size)] if k.size else [])], capture_output=True)  # fmt: skip
    run([*mb, "train", "--data", str(work / "data-v3"), "--seed", "2", *sized, "--epochs", str(k.v3_epochs),
         "--arch", "squeezenet1_0", "--out", str(work / "run-v3"), "--no-progress", *alone],
        capture_output=True)  # fmt: skip

    say("4/8 signing key; packaging v1 (compressed), v2 and v3, and, for comparison only, the fp32 run")
    run([*mb, "keygen", "--out", str(work / "keys")], capture_output=True)
    key, pub = work / "keys" / "signing.key", work / "keys" / "signing.pub"

    def package(run_dir: str, version: int, out: str, *extra: str) -> list[str]:
        return [*mb, "package", str(work / run_dir), "--name", MODEL, "--key", str(key), "--version", str(version),
                *extra, "--out", str(work / out)]  # fmt: skip

    run_all([
        package("run-fp32", 1, "shapes-v1-fp32.otam"),
        package("run-v1", 1, "shapes-v1.otam"),
        package("run-v2", 2, "shapes-v2.otam", "--parent-version", "1"),
        package("run-v3", 3, "shapes-v3.otam"),
    ])  # fmt: skip

    say("5/8 starting the server (SQLite, local storage); publishing v1 with an immediate rollout")
    port = free_port(k.port)
    url = f"http://127.0.0.1:{port}"
    admin, enroll = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    server_env = {
        **local_server_env(work, admin=admin, enroll=enroll, publisher_key=pub, poll_interval=2),
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
    say(f"6/8 starting a device agent serving /predict and a simulated fleet of {k.fleet}, "
        f"each device running {k.rate} inferences/s and reporting metrics")  # fmt: skip
    agent_port = free_port(port + 1)
    procs.start("agent", [
        str(BIN / "device-agent"), "run", "--server", url, "--model", MODEL, "--model-dir", str(work / "device-1"),
        "--trust", str(pub), f"--enroll-secret={enroll}", "--device-id", "demo-device-1",
        "--serve", f"127.0.0.1:{agent_port}", "--poll-interval", "1", "--metrics-interval", "3600",
    ])  # fmt: skip
    fleet_report = work / "fleet-report.json"
    fleet = procs.start("fleet", [
        str(BIN / "device-agent"), "simulate", "--server", url, "--model", MODEL, "--trust", str(pub),
        f"--enroll-secret={enroll}", "--devices", str(k.fleet), "--timeout", "3600",
        "--poll-interval", "2", "--model-dir", str(work / "fleet"), "--json",
        "--inference-rate", str(k.rate), "--metrics-interval", "5",
    ], stdout=fleet_report)  # fmt: skip
    predict = f"http://127.0.0.1:{agent_port}"
    devices = k.fleet + 1

    def agent_on(version: int) -> bool:
        return bool(httpx.get(f"{predict}/status", timeout=2).json().get("version") == version)

    wait_for("the device agent to serve v1", lambda: agent_on(1), 300, procs)
    wait_for(f"{devices} devices to run v1", lambda: api.fleet().get(1, 0) >= devices, 600, procs)
    sample = next((work / "data" / "val").rglob("*.png")).read_bytes()
    load = PredictLoad(f"{predict}/predict", sample, k.predict_rate)
    load.start()
    print(f"    fleet {fleet_text(api.fleet())}; a client calls {predict}/predict {k.predict_rate} times a second")

    say("7/8 publishing v2, waiting for the server's delta v1 → v2, then a staged rollout")
    publish(mb, work / "shapes-v2.otam", url, admin, [])
    wait_for("the server's delta v1 → v2", lambda: api.delta_length(2, 1) is not None, 120, procs)
    print(f"    the server built the delta v1 → v2: {api.delta_length(2, 1):,} B; rolling v2 out", flush=True)
    publish(mb, work / "shapes-v2.otam", url, admin, staged)
    v2 = watch_rollout(api, 2, {"completed", "paused", "aborted"}, 900, procs)
    if v2["state"] != "completed":
        raise DemoError(f"the rollout of v2 ended {v2['state']} ({v2.get('reason')}), not completed")
    wait_for("the device agent to serve v2", lambda: agent_on(2), 300, procs)
    wait_for(f"{devices} devices to run v2", lambda: api.fleet().get(2, 0) >= devices, 600, procs)
    print(f"    fleet {fleet_text(api.fleet())}; /predict: {load.ok:,} requests answered, {load.failed} failed")

    say("8/8 publishing v3 (SqueezeNet 1.0) with the same staged rollout")
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

    say("summary")
    result = summary(work, api, load, predict, fleet_report, time.monotonic() - started)
    print(result["text"], flush=True)
    (work / "summary.json").write_text(json.dumps(result["json"], indent=1))
    ok = load.failed == 0 and result["ok"]
    if not ok:
        print("demo: the story did not go as told; see the summary above and the logs in " + str(work / "logs"))
    if k.exit_after:
        return 0 if ok else 1
    print(f"\nStill running: server {url} (admin token {admin}), device {predict}/status.")
    print(f"Try: curl -s -H 'Authorization: Bearer {admin}' {url}/v1/rollouts/{v3['id']}")
    print(f"Ops dashboard: open {url}/ and sign in with the admin token {admin}")
    print("Press Ctrl-C to stop every process the demo started.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
