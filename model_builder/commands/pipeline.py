"""`model-builder pipeline`: train → compress → package (sign) → publish (→ roll out), in one command.

Compression runs when any of ``--method``, ``--density`` or ``--bits`` is given; every flag is
checked before training starts (a typo costs no minutes). A compression that loses more than
``--max-loss`` points stops the pipeline before anything is signed or uploaded. The summary puts
the fp32 model and what ships side by side: accuracy and bytes on the air.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

import artifact as A
from model_builder.compress.config import METHODS, CompressConfig
from model_builder.compress.pipeline import compress_run
from model_builder.data import DataWarning
from model_builder.errors import CommandError
from model_builder.publish import publish

from .package import package_run
from .publish import add_rollout_arguments, rollout_plan, start_rollout
from .train import add_train_arguments, train_config, train_run


def _compress_config(args: argparse.Namespace, run: Path) -> CompressConfig | None:
    """The compression the flags ask for (checked now), or None when none of its flags was given."""
    if args.method is None and args.density is None and args.bits is None:
        if args.finetune_steps is not None:
            raise CommandError("--finetune-steps needs a compression: add --density/--bits or --method int8")
        return None
    out = Path(args.compressed_out) if args.compressed_out else run / "compressed"
    cfg = CompressConfig(
        run=str(run),
        out=str(out),
        method=args.method or "kmeans",
        density=args.density,
        bits=args.bits,
        finetune_steps=args.finetune_steps,
        max_loss=args.max_loss,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
    )
    cfg.check()
    return cfg


def _pipeline(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("OTA_ADMIN_TOKEN")
    if args.server and not token:
        raise CommandError("--server needs a token: pass --token or set OTA_ADMIN_TOKEN")
    if args.version < 1:
        raise CommandError("--version must be a positive integer")
    if args.rollout is not None and not args.server:
        raise CommandError("--rollout needs --server (a rollout starts after the upload)")
    plan = rollout_plan(args)
    out = Path(args.out)
    comp = _compress_config(args, out)
    A.load_private_key(Path(args.key))  # a bad key fails now, not after training
    print(f"[1/5] training into {out}", flush=True)
    trained = train_run(train_config(args))
    print(f"      best epoch {trained.best_epoch}: val accuracy {trained.val_accuracy:.2%}", flush=True)
    rows: list[tuple[str, float, int | None]] = [("fp32 (trained)", trained.val_accuracy, None)]
    ship = out
    if comp is None:
        print("[2/5] no compression asked for (--density/--bits or --method int8): shipping fp32", flush=True)
    else:
        what = f"{comp.bits} bits" if comp.method == "kmeans" else "int8"
        print(f"[2/5] compressing into {comp.out} ({comp.method}, {what}, --max-loss {comp.max_loss:g})", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            result = compress_run(comp, log=lambda line: print(f"      {line}", flush=True))
        report, sched = result.report, result.report["schedule"]
        size = report["size"]
        rows = [
            ("fp32 (trained)", report["accuracy"]["fp32"], size["fp32"]["payload_bytes"]),
            (_label(report), report["accuracy"]["final"], size["compressed"]["payload_bytes"]),
        ]
        print(
            f"      {sched['masked_steps'] + sched['codebook_steps']:,} fine-tuning steps; "
            f"{report['accuracy']['final']:.2%} (fp32 {report['accuracy']['fp32']:.2%})",
            flush=True,
        )
        ship = result.out
    artifact_path = Path(args.artifact) if args.artifact else out / f"{args.name}-v{args.version}.otam"
    print(f"[3/5] packaging and signing {artifact_path}", flush=True)
    _, artifact_size = package_run(
        ship,
        name=args.name,
        version=args.version,
        key=Path(args.key),
        out=artifact_path,
        parent_version=args.parent_version,
        expires_days=args.expires_days,
    )
    payload = A.read_artifact(artifact_path.read_bytes()).payload
    if rows[-1][2] is None:
        rows[-1] = (rows[-1][0], rows[-1][1], len(payload))
    print(f"      {artifact_size:,} bytes ({len(payload):,} bytes of payload)", flush=True)
    if not args.server:
        print("[4/5] no --server given: not published", flush=True)
    else:
        print(f"[4/5] publishing to {args.server}", flush=True)
        answer = publish(artifact_path, args.server, token or "", progress=not args.no_progress)
        print(f"      {answer.message}", flush=True)
    if plan is None:
        print("[5/5] no --rollout given: no rollout started", flush=True)
    else:
        print("[5/5] starting the rollout", flush=True)
        print(f"      {start_rollout(artifact_path, args.server, token or '', plan, retries=4)}", flush=True)
    print(_summary(rows, artifact_path, artifact_size))
    return 0


def _label(report: dict[str, Any]) -> str:
    cfg = report["config"]
    density = report["achieved"]["density"]
    if cfg["method"] == "kmeans":
        return f"k-means {cfg['bits']} bits, density {density:.0%}"
    return f"int8, density {density:.0%}"


def _summary(rows: list[tuple[str, float, int | None]], artifact_path: Path, artifact_size: int) -> str:
    """Each stage's accuracy (the parent's validation split) and payload; the last row is what ships."""
    lines = ["", "| stage | val accuracy | payload bytes |", "| --- | ---: | ---: |"]
    for i, (label, acc, payload) in enumerate(rows):
        shipped = " (shipped)" if i == len(rows) - 1 else ""
        lines.append(f"| {label}{shipped} | {acc:.2%} | {'' if payload is None else f'{payload:,}'} |")
    lines.append(f"\nartifact {artifact_path}: {artifact_size:,} bytes, signed")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pipeline",
        help="train → compress → package → publish (→ roll out) in one go",
        description="Train a run into --out, optionally compress it (--density/--bits, or --method int8; stopped "
        "when it loses more than --max-loss points), sign it as an artifact, publish it and start its rollout.",
    )
    p.add_argument("--out", required=True, help="run directory")
    add_train_arguments(p)
    c = p.add_argument_group("compression (runs when --method, --density or --bits is given)")
    c.add_argument("--method", choices=METHODS, default=None, help="kmeans (Deep Compression) or int8")
    c.add_argument("--density", type=float, help="fraction of conv weights kept, e.g. 0.33")
    c.add_argument("--bits", type=int, help="kmeans: bits per shared weight, e.g. 6")
    c.add_argument("--finetune-steps", type=int, help="masked fine-tuning steps (default: compress's schedule)")
    c.add_argument(
        "--max-loss",
        type=float,
        default=CompressConfig.max_loss,
        metavar="POINTS",
        help=f"stop when compression loses more val accuracy than this (default {CompressConfig.max_loss:g})",
    )
    c.add_argument("--compressed-out", default=None, help="compressed run directory (default: OUT/compressed)")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--parent-version", type=int, default=None)
    p.add_argument("--key", required=True, help="private signing key (DIR/signing.key)")
    p.add_argument("--artifact", default=None, help="artifact path (default: RUN/NAME-vN.otam)")
    p.add_argument("--expires-days", type=float, default=None)
    p.add_argument("--server", default=None, help="publish here (omit to stop after packaging)")
    p.add_argument("--token", default=None, help="admin token (default: $OTA_ADMIN_TOKEN)")
    add_rollout_arguments(p)
    p.set_defaults(func=_pipeline)
