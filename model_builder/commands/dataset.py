"""`model-builder make-dataset`: generate a synthetic dataset for demos, tests and benchmarks.

The shapes dataset is deterministic under its seed, so a benchmark or a bug report names its data
by four numbers instead of shipping images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model_builder.data import SHAPES, make_shapes_dataset
from model_builder.errors import CommandError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "make-dataset",
        help="generate a synthetic image-folder dataset",
        description=f"Write DIR/train/<class>/*.png and DIR/val/<class>/*.png. 'shapes': ten classes "
        f"({', '.join(SHAPES)}) in random colours, sizes, places and angles on cluttered backgrounds.",
    )
    p.add_argument("kind", choices=["shapes"], help="which dataset to generate")
    p.add_argument("--out", required=True, type=Path, help="an empty or new folder")
    p.add_argument("--per-class", type=int, default=500, help="training images per class (default 500)")
    p.add_argument("--val-per-class", type=int, default=None, help="validation images per class (default per-class/5)")
    p.add_argument("--size", type=int, default=64, help="image height and width in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"{out} exists and is not an empty folder: choose a new one (no files are overwritten)")
    if args.per_class < 1 or args.size < 16 or (args.val_per_class is not None and args.val_per_class < 1):
        raise CommandError("--per-class and --val-per-class must be >= 1 and --size >= 16")
    counts = make_shapes_dataset(out, args.per_class, args.size, args.seed, args.val_per_class, progress=True)
    print(
        f"wrote {counts['train']} training and {counts['val']} validation images ({len(SHAPES)} classes, "
        f"{args.size}x{args.size}, seed {args.seed}) to {out}"
    )
    return 0
