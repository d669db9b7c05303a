"""`model-builder compress RUN --out RUN2`: Deep Compression (prune, share, fine-tune) or int8, as a new run."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from model_builder.compress.config import DEFAULT_FINETUNE_EPOCHS, METHODS, MIN_FINETUNE_STEPS, CompressConfig
from model_builder.compress.pipeline import compress_run
from model_builder.compress.quantize import ACTIVATION_TYPES
from model_builder.data import DataWarning


def register(subparsers: Any) -> None:
    d = CompressConfig(run="", out="")
    p = subparsers.add_parser(
        "compress",
        help="prune, share weights (k-means) or quantize (int8) a run into a new run",
        description="Write a compressed copy of RUN to --out: best.pt (decoded weights, same checkpoint format), "
        "model.onnx (the deployable model: index tensors ONNX Runtime folds at load, or int8 QDQ), "
        "compression.json (the report). `model-builder package OUT ...` then ships model.onnx.",
    )
    p.add_argument("run", help="training run directory (or its best.pt)")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--method", choices=METHODS, default=d.method, help=f"default {d.method}")
    p.add_argument(
        "--density",
        type=float,
        help="fraction of conv weights kept, in (0, 1] (default 0.33 for kmeans, 1 = no pruning for int8)",
    )
    p.add_argument(
        "--bits",
        type=int,
        help="kmeans: bits per shared weight, 2-8 (2^bits values per layer, 0 included); required unless --init-from",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        metavar="S",
        help="S optimizer steps of masked fine-tuning (pruning in the first third), S/3 for codebooks (default: "
        f"{3 * DEFAULT_FINETUNE_EPOCHS} epochs' worth, at least {MIN_FINETUNE_STEPS} steps, so small data sets get "
        "enough updates)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        metavar="N",
        help="instead of --finetune-steps: 3N epochs of masked fine-tuning, N for codebooks (no floor)",
    )
    p.add_argument(
        "--max-loss",
        type=float,
        default=d.max_loss,
        metavar="POINTS",
        help="refuse (exit non-zero, write nothing) when the result is more than POINTS of validation accuracy "
        f"below the parent (default {d.max_loss:g})",
    )
    p.add_argument(
        "--prune-steps",
        type=int,
        default=d.prune_steps,
        help=f"pruning rounds on a geometric schedule, in the first third (default {d.prune_steps})",
    )
    p.add_argument(
        "--rate-weight",
        type=float,
        default=d.rate_weight,
        help="kmeans: weight of the index entropy in the assignment (entropy-constrained k-means; "
        f"0 = plain k-means as in Deep Compression; default {d.rate_weight:g})",
    )
    p.add_argument("--data", help="training images (default: the parent run's data and split)")
    p.add_argument(
        "--init-from",
        metavar="RUN_COMPRESSED",
        help="start from this compressed run's masks and codebooks (small deltas for a fine-tuned child)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"masked fine-tuning learning rate (default {d.lr:g})")
    p.add_argument(
        "--codebook-lr",
        type=float,
        default=d.codebook_lr,
        help=f"centroid fine-tuning learning rate (default {d.codebook_lr:g})",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=d.calibration_images,
        help=f"int8: training images for activation ranges (default {d.calibration_images})",
    )
    p.add_argument(
        "--activations",
        choices=ACTIVATION_TYPES,
        default=d.activations,
        help=f"int8: activation type (default {d.activations})",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = CompressConfig(
        run=args.run,
        out=args.out,
        method=args.method,
        density=args.density,
        bits=args.bits,
        finetune_steps=args.finetune_steps,
        finetune_epochs=args.finetune_epochs,
        max_loss=args.max_loss,
        prune_steps=args.prune_steps,
        rate_weight=args.rate_weight,
        data=args.data,
        init_from=args.init_from,
        lr=args.lr,
        codebook_lr=args.codebook_lr,
        batch_size=args.batch_size,
        calibration_images=args.calibration_images,
        activations=args.activations,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = compress_run(cfg, log=lambda line: print(line, flush=True))
    print()
    print(result.summary)
    print(
        f"\nwrote {result.out}/best.pt, model.onnx, compression.json; ship it with: model-builder package "
        f"{result.out} --name NAME --version N --key KEY --out FILE"
    )
    return 0
