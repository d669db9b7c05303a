"""Benchmark: staged rollouts on a simulated fleet, two server processes on one PostgreSQL.

Part 1, the rollout scenarios (issue 11's goals). Builds four real artifacts (10 classes, 64 px):
v1 SqueezeNet 1.1, v2 = v1 with a retrained classifier (the good update), v3 = v2's weights signed
with golden expected outputs that are wrong (valid and signed, refused by every device's golden
check), v4 = SqueezeNet 1.0 (valid, passes its golden set, about twice the compute). Starts two
`python -m server serve` processes on one private PostgreSQL schema (local blob storage shared),
rolls v1 out at once, and runs two `device-agent simulate` processes, half the fleet on each server,
each device running real inferences and sending `metrics` events. Then, each rollout with the same
specification (stages 5 → 25 → 100 %, a soak per stage, `latency_p95_ratio ≤ 1.5` and
`validation_failures ≤ 0` gates):

- A: v2 must complete; for each stage, the delay between its soak's end and the transition (from
  the rollout's history) in poll intervals (goal ≤ 2);
- B: v3 must halt at the first stage; devices offered it (the rollout's counts, and what the fleet
  holds) against the first stage's cohort;
- C: v4 must halt with reason `gate:latency_p95_ratio`.

Part 2, poll cost (same run, alternating rounds): 10,000 devices enrolled through the data layer
(bench/poll.py's machinery), one uvicorn worker of the real server, a bare FastAPI app beside it;
each round measures bare → poll with no active rollout → poll with an active rollout (25 % stage;
devices in the cohort already on its version, the others on the baseline: every answer a 204, the
steady state during a rollout). The rollout is aborted after each round and a fresh one created in
the next.

Part 1 lives in `bench/_rollout_scenarios.py`, part 2 in `bench/_rollout_poll.py`, the processes
and admin client both use in `bench/_rollout_cluster.py`. Prints a table per part and a one-line
verdict per goal. Results go to docs/benchmarks.md (section
`rollouts`).

    .venv/bin/python -m bench.rollouts [--quick] [--devices 1000] [--soak 30] [--no-write] [--skip-poll]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench._rollout_cluster import T0, log
from bench._rollout_poll import poll_cost
from bench._rollout_scenarios import scenarios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="100 devices, short soaks and rounds (smoke run; not written)"
    )
    parser.add_argument("--devices", type=int, help="simulated devices (default 1000; --quick 100)")
    parser.add_argument("--soak", type=int, help="soak seconds per stage (default 30; --quick 15)")
    parser.add_argument("--inference-rate", type=float, help="inferences/s per device (default 0.2; --quick 1)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--skip-poll", action="store_true", help="only the rollout scenarios")
    parser.add_argument("--skip-scenarios", action="store_true", help="only the poll cost")
    args = parser.parse_args()
    args.devices = args.devices or (100 if args.quick else 1000)
    args.soak = args.soak if args.soak is not None else (15 if args.quick else 30)
    args.inference_rate = args.inference_rate or (1.0 if args.quick else 0.2)
    args.min_samples = 10 if args.quick else 30
    args.scenario_timeout = 240 if args.quick else 600
    args.poll_devices = 2000 if args.quick else 10_000
    args.rounds = 1 if args.quick else 5
    args.duration = 2.0 if args.quick else 5.0
    args.warmup = 1.0

    lines: list[str] = []
    verdicts: list[str] = []
    oks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="ota-bench-rollouts-") as tmp:
        if not args.skip_scenarios:
            s_lines, s_verdicts, s_ok = scenarios(Path(tmp), args)
            lines += s_lines
            verdicts += s_verdicts
            oks |= s_ok
        if not args.skip_poll:
            p_lines, p_verdicts, p_ok = poll_cost(Path(tmp), args)
            lines += ["", *p_lines]
            verdicts += p_verdicts
            oks |= p_ok
    ok = all(oks.values())
    summary = (
        f"Verdict: {'PASS' if ok else 'FAIL'} — {sum(oks.values())} of {len(oks)} goals of issue 11 met.\n\n"
        + "\n".join(verdicts)
    )
    table = "\n".join(lines).strip()
    print(table + "\n\n" + summary)
    log(f"done in {time.monotonic() - T0:.0f} s")
    if not args.no_write and not args.quick and not args.skip_poll and not args.skip_scenarios:
        from bench._report import write_section

        write_section("rollouts", table + "\n\n" + summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
