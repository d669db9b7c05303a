"""`model-builder export`: a run's best checkpoint as ONNX, checked against PyTorch before it is kept."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model_builder.export import OPSET, TOLERANCE, export_run


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run to ONNX and check it with ONNX Runtime",
        description="Write RUN's best checkpoint as ONNX (input 'input' [batch,3,H,W], output 'logits', dynamic "
        "batch) and fail unless ONNX Runtime matches PyTorch on real validation images.",
    )
    p.add_argument("run", type=Path, help="run directory (or its best.pt)")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--data", type=Path, help="also check on images from this folder (its val/ if present)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, >= 17 (default {OPSET})")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help=f"max |ORT - torch| (default {TOLERANCE:g})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = export_run(args.run, args.out, args.data, args.opset, args.tolerance)
    print(
        f"wrote {report.path} ({report.onnx_bytes:,} bytes, opset {report.opset}, input [batch,3,"
        f"{report.image_size},{report.image_size}], {report.num_classes} classes); ONNX Runtime matches PyTorch "
        f"on {report.images_checked} validation images: max |diff| {report.max_abs_diff:.2e}, "
        f"top-1 agreement {report.top1_agreement:.0%}"
    )
    return 0
