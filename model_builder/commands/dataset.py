"""`model-builder make-dataset`: write a data set for demos, tests and benchmarks as an image folder.

``shapes`` is synthetic and deterministic under its seed, so a benchmark or a bug report names its
data by four numbers instead of shipping images. ``digits`` is real: the handwritten digits that
scikit-learn ships (1,797 scans, no download), upscaled to the model's input size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model_builder.data import SHAPES, make_shapes_dataset
from model_builder.digits import make_digits_dataset
from model_builder.errors import CommandError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "make-dataset",
        help="write an image-folder dataset (synthetic shapes, or real handwritten digits)",
        description=f"Write DIR/train/<class>/*.png and DIR/val/<class>/*.png. 'shapes': ten classes "
        f"({', '.join(SHAPES)}) in random colours, sizes, places and angles on cluttered backgrounds. 'digits': "
        "the 1,797 handwritten digit scans scikit-learn ships (8x8, upscaled to --size, grayscale), 20 % of "
        "each class held out by --seed: 1,438 train / 359 val.",
    )
    p.add_argument("kind", choices=["shapes", "digits"], help="which dataset to write")
    p.add_argument("--out", required=True, type=Path, help="an empty or new folder")
    p.add_argument(
        "--per-class", type=int, default=None, help="training images per class (shapes: default 500; digits: all)"
    )
    p.add_argument(
        "--val-per-class",
        type=int,
        default=None,
        help="validation images per class (shapes: default per-class/5; digits: all held out)",
    )
    p.add_argument("--size", type=int, default=64, help="image height and width in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"{out} exists and is not an empty folder: choose a new one (no files are overwritten)")
    if any(n is not None and n < 1 for n in (args.per_class, args.val_per_class)) or args.size < 16:
        raise CommandError("--per-class and --val-per-class must be >= 1 and --size >= 16")
    if args.kind == "digits":
        counts = make_digits_dataset(out, args.size, args.seed, args.per_class, args.val_per_class, progress=True)
    else:
        per_class = 500 if args.per_class is None else args.per_class
        counts = make_shapes_dataset(out, per_class, args.size, args.seed, args.val_per_class, progress=True)
    print(
        f"wrote {counts['train']} training and {counts['val']} validation images ({args.kind}, 10 classes, "
        f"{args.size}x{args.size}, seed {args.seed}) to {out}"
    )
    return 0
