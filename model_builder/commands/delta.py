"""`model-builder delta make|apply`: model-aware deltas between two ONNX files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from artifact import apply_delta, make_delta, read_delta_header
from model_builder.fsutil import write_atomic

from ._io import read_input


def _make(args: argparse.Namespace) -> int:
    old, new = read_input(args.old, "old model"), read_input(args.new, "new model")
    start = time.perf_counter()
    delta = make_delta(old, new)
    elapsed = time.perf_counter() - start
    write_atomic(args.out, delta)
    print(
        f"delta {args.out}: {len(delta):,} bytes for a {len(new):,}-byte model "
        f"({len(delta) / max(len(new), 1):.1%}), made in {elapsed:.2f} s"
    )
    return 0


def _apply(args: argparse.Namespace) -> int:
    old, delta = read_input(args.old, "base model"), read_input(args.delta, "delta")
    info = read_delta_header(delta)
    new = apply_delta(old, delta)
    write_atomic(args.out, new)
    print(f"rebuilt {args.out}: {len(new):,} bytes, sha256 {info.result_sha256}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("delta", help="make or apply a model-aware delta between two ONNX models")
    dsub = p.add_subparsers(dest="delta_command", metavar="ACTION", required=True)
    mk = dsub.add_parser("make", help="encode NEW relative to OLD")
    mk.add_argument("old", type=Path, metavar="OLD")
    mk.add_argument("new", type=Path, metavar="NEW")
    mk.add_argument("--out", type=Path, required=True, metavar="DELTA")
    mk.set_defaults(func=_make)
    ap = dsub.add_parser("apply", help="rebuild NEW from OLD and DELTA (byte-exact, hash-checked)")
    ap.add_argument("old", type=Path, metavar="OLD")
    ap.add_argument("delta", type=Path, metavar="DELTA")
    ap.add_argument("--out", type=Path, required=True, metavar="NEW")
    ap.set_defaults(func=_apply)
