"""`model-builder train`: from an image folder to a run directory holding the best checkpoint.

The library's own errors (bad data, an unusable ``--init``) rise to the command line as they are;
only a ``ValueError`` (a model configuration that cannot be built) becomes a ``CommandError`` here.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from model_builder.data import DataWarning
from model_builder.errors import CommandError
from model_builder.squeezenet import ARCHS, BYPASSES
from model_builder.train import TrainConfig, TrainResult, train


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SqueezeNet on an image folder",
        description="Train on DIR (one sub-folder per class; DIR/train + DIR/val are used as that split, else "
        "--val, else a seeded split) and keep the best epoch by validation accuracy in RUN/best.pt, with "
        "RUN/run.json and RUN/samples.npz.",
    )
    p.add_argument("--out", required=True, help="run directory to create or update")
    add_train_arguments(p)
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The training options, shared by `train` and `pipeline`."""
    d = TrainConfig(data="", out="")
    p.add_argument("--data", required=True, help="image folder (one sub-folder per class)")
    p.add_argument("--val", help="separate validation folder (same class names)")
    p.add_argument("--arch", choices=ARCHS, help="default: the parent's with --init, else squeezenet1_1")
    p.add_argument("--bypass", choices=BYPASSES, help="default: the parent's with --init, else none")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"pixels, >= 64 (default {d.image_size})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes init, split, shuffling, augmentation")
    p.add_argument("--init", metavar="PARENT", help="run directory, checkpoint, or SqueezeNet state_dict file")
    p.add_argument("--freeze-features", action="store_true", help="train the classifier (conv10) only")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held out when there is no val folder")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice, one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        out=args.out,
        val=args.val,
        arch=args.arch,
        bypass=args.bypass,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        init=args.init,
        freeze_features=args.freeze_features,
        val_fraction=args.val_fraction,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )


def train_run(cfg: TrainConfig) -> TrainResult:
    """Train; a model configuration that cannot be built (``ValueError``) becomes a one-line command error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # train() reports skipped images as a note
            result = train(cfg, log=lambda line: print(line, flush=True))
    except ValueError as e:
        raise CommandError(str(e)) from e
    return result


def run(args: argparse.Namespace) -> int:
    result = train_run(train_config(args))
    print(
        f"best epoch {result.best_epoch}: val accuracy {result.val_accuracy:.2%}, val loss {result.val_loss:.4f}, "
        f"{result.params:,} parameters, {result.seconds:.0f} s -> {result.run_dir / 'best.pt'}",
        file=sys.stdout,
    )
    return 0
