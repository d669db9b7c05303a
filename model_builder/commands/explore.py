"""`model-builder explore --data DIR --sweep squeeze_ratio=0.125,0.25,0.5 --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model_builder.explore import explore, parse_sweep
from model_builder.train import TrainConfig


def _explore(args: argparse.Namespace) -> int:
    parameter, values = parse_sweep(args.sweep)
    base = TrainConfig(
        data=args.data, out="", arch=args.arch, epochs=args.epochs, image_size=args.image_size,
        batch_size=args.batch_size, seed=args.seed, threads=args.threads, progress=not args.no_progress,
    )  # fmt: skip
    points = explore(base, parameter, values, Path(args.out), log=lambda line: print(line, flush=True))
    print(f"\n{'value':>8} {'params':>10} {'MB':>7} {'val acc':>8}")
    for p in points:
        print(f"{p.value:>8g} {p.params:>10,} {p.megabytes:>7.2f} {p.val_accuracy:>8.2%}")
    print(f"wrote {Path(args.out) / 'explore.csv'} and {Path(args.out) / 'explore.png'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("explore", help="design-space exploration: train variants, plot size vs accuracy")
    p.add_argument("--data", required=True, help="image folder")
    p.add_argument("--sweep", required=True, help="NAME=V1,V2,… (squeeze_ratio, pct_3x3, base_e, incr_e, freq)")
    p.add_argument("--out", default="explore", help="directory for the runs, CSV and PNG (default ./explore)")
    p.add_argument("--arch", default="squeezenet1_1", choices=["squeezenet1_0", "squeezenet1_1"])
    p.add_argument("--epochs", type=int, default=10, help="training budget per variant (default 10)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_explore)
