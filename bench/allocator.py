"""Benchmark: training throughput with glibc's default malloc against ``keep_freed_memory()``.

SqueezeNet 1.1, 10 classes, 64 px, batch 64, AdamW, channels-last, torch's default threads: the same
training steps in fresh processes, default allocator and tuned allocator alternating (A B A B …), so that
a noisy shared machine slows both alike. Reports img/s and the share of CPU time spent in the kernel.
Goal: the tuned allocator is >= 1.1x as fast (see model_builder/allocator.py).

    .venv/bin/python -m bench.allocator [--steps 60] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench._report import write_section

GOAL = 1.1

CHILD = r"""
import json, resource, sys, time
tuned = sys.argv[1] == "1"
steps = int(sys.argv[2])
if tuned:
    from model_builder.allocator import keep_freed_memory
    assert keep_freed_memory(), "mallopt refused"
import torch
from model_builder.squeezenet import SqueezeNet, SqueezeNetConfig
torch.manual_seed(0)
model = SqueezeNet(SqueezeNetConfig(num_classes=10)).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
x = torch.randn(64, 3, 64, 64).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(5):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
for _ in range(steps):
    step()
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
print(json.dumps({"img_s": steps * 64 / wall, "kernel_share": system / max(user + system, 1e-9)}))
"""


def one(tuned: bool, steps: int) -> dict[str, float]:
    argv = [sys.executable, "-c", CHILD, "1" if tuned else "0", str(steps)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"allocator bench: the child failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per process (default 60)")
    ap.add_argument("--rounds", type=int, default=3, help="A/B pairs (default 3)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for r in range(args.rounds):
        for tuned in (False, True):
            runs[tuned].append(one(tuned, args.steps))
            print(f"round {r + 1}: {'tuned' if tuned else 'default'} {runs[tuned][-1]['img_s']:.0f} img/s", flush=True)
    rows = [f"| allocator | img/s (median of {args.rounds}) | kernel share of CPU time |", "|---|---:|---:|"]
    med = {}
    for tuned, label in ((False, "glibc defaults"), (True, "keep_freed_memory()")):
        med[tuned] = statistics.median(x["img_s"] for x in runs[tuned])
        kernel = statistics.median(x["kernel_share"] for x in runs[tuned])
        rows.append(f"| {label} | {med[tuned]:.0f} | {kernel:.1%} |")
    ratio = med[True] / med[False]
    verdict = f"verdict (tuned >= {GOAL}x the default): {'PASS' if ratio >= GOAL else 'FAIL'} - {ratio:.2f}x"
    text = "\n".join(rows) + "\n\n" + verdict + "\n"
    print(text)
    if not args.no_write:
        body = (
            f"SqueezeNet 1.1 training steps (10 classes, 64 px, batch 64, AdamW, channels-last), {args.steps} "
            f"steps per fresh process, default and tuned allocator alternating.\n\n" + text
        )
        write_section("allocator", body)
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
