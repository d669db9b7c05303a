"""`model-builder pipeline`: train → export → package → publish, in one command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from model_builder.errors import CommandError
from model_builder.publish import publish

from .package import package_run
from .train import add_train_arguments, train_config, train_run


def _pipeline(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("OTA_ADMIN_TOKEN")
    if args.server and not token:
        raise CommandError("--server needs a token: pass --token or set OTA_ADMIN_TOKEN")
    if args.version < 1:
        raise CommandError("--version must be a positive integer")
    out = Path(args.out)
    print(f"[1/4] training into {out}", flush=True)
    result = train_run(train_config(args))
    print(f"      best epoch {result.best_epoch}: val accuracy {result.val_accuracy:.2%}", flush=True)
    artifact_path = Path(args.artifact) if args.artifact else out / f"{args.name}-v{args.version}.otam"
    print("[2/4] exporting to ONNX (checked against PyTorch on validation images)", flush=True)
    print(f"[3/4] packaging and signing {artifact_path}", flush=True)
    _, size = package_run(
        out,
        name=args.name,
        version=args.version,
        key=Path(args.key),
        out=artifact_path,
        parent_version=args.parent_version,
        expires_days=args.expires_days,
    )
    print(f"      {size:,} bytes", flush=True)
    if not args.server:
        print("[4/4] no --server given: not published", flush=True)
        return 0
    print(f"[4/4] publishing to {args.server}", flush=True)
    answer = publish(artifact_path, args.server, token or "", progress=not args.no_progress)
    print(f"      {answer.message}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="train → export → package → publish in one go")
    p.add_argument("--out", required=True, help="run directory")
    add_train_arguments(p)
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--parent-version", type=int, default=None)
    p.add_argument("--key", required=True, help="private signing key (DIR/signing.key)")
    p.add_argument("--artifact", default=None, help="artifact path (default: RUN/NAME-vN.otam)")
    p.add_argument("--expires-days", type=float, default=None)
    p.add_argument("--server", default=None, help="publish here (omit to stop after packaging)")
    p.add_argument("--token", default=None, help="admin token (default: $OTA_ADMIN_TOKEN)")
    p.set_defaults(func=_pipeline)
