"""`model-builder describe`: the paper's Table 1 for any SqueezeNet variant, before training it.

Model teams size a variant (its parameters, its feature-map sizes at the device's input size)
without a dataset or a checkpoint; ``--json`` gives every parameter tensor for tooling.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

import torch

from model_builder.errors import CommandError
from model_builder.squeezenet import ARCHS, BYPASSES, SqueezeNet, SqueezeNetConfig, table1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "describe",
        help="print the paper's Table 1 (layers, sizes, filters, parameters) for a model",
        description="Print the SqueezeNet paper's Table 1 for one variant: per layer the output size, "
        "the Fire filter counts (s1x1, e1x1, e3x3), the bypass and the parameters, then the total.",
    )
    p.add_argument("--arch", choices=ARCHS, default="squeezenet1_1")
    p.add_argument("--bypass", choices=BYPASSES, default="none")
    p.add_argument("--classes", type=int, default=1000, help="number of output classes (default 1000)")
    p.add_argument("--image-size", type=int, default=224, help="input height and width in pixels (default 224)")
    p.add_argument("--json", action="store_true", help="every parameter tensor's name and shape, and the total")
    p.set_defaults(func=run)


def describe(arch: str, bypass: str, classes: int, image_size: int) -> dict[str, Any]:
    """Table 1 rows and the parameter list as plain data (what ``--json`` prints)."""
    try:
        config = SqueezeNetConfig(arch=arch, bypass=bypass, num_classes=classes)
    except ValueError as e:
        raise CommandError(str(e)) from e
    rows = table1(config, image_size)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = SqueezeNet(config)
    params = [{"name": n, "shape": list(p.shape)} for n, p in model.named_parameters()]
    return {
        "arch": arch,
        "bypass": bypass,
        "num_classes": classes,
        "image_size": image_size,
        "layers": [{**asdict(r), "output": list(r.output)} for r in rows],
        "parameters": params,
        "total_params": sum(r.params for r in rows),
    }


def format_table(info: dict[str, Any]) -> str:
    head = ("layer", "output size", "filter", "s1x1", "e1x1", "e3x3", "bypass", "params")
    lines = [tuple(head)]
    lines.append(("input", f"{info['image_size']}x{info['image_size']}x3", "", "", "", "", "", ""))
    for r in info["layers"]:
        h, w, c = r["output"]
        counts = ["" if r[k] is None else str(r[k]) for k in ("s1x1", "e1x1", "e3x3")]
        lines.append((r["layer"], f"{h}x{w}x{c}", r["filter"], *counts, r["bypass"], f"{r['params']:,}"))
    lines.append(("total", "", "", "", "", "", "", f"{info['total_params']:,}"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    title = (
        f"{info['arch']}, bypass {info['bypass']}, {info['num_classes']} classes, "
        f"{info['image_size']}x{info['image_size']} input"
    )

    def fmt(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    body = [fmt(row) for row in lines]
    return "\n".join([title, "", *body])


def run(args: argparse.Namespace) -> int:
    if args.classes < 1:
        raise CommandError(f"--classes must be at least 1, got {args.classes}")
    if args.image_size < 64:
        raise CommandError(f"--image-size must be at least 64 pixels, got {args.image_size}")
    info = describe(args.arch, args.bypass, args.classes, args.image_size)
    if args.json:
        print(
            json.dumps(
                {
                    k: info[k]
                    for k in ("arch", "bypass", "num_classes", "image_size", "parameters", "total_params", "layers")
                },
                indent=2,
            )
        )
    else:
        print(format_table(info))
    return 0
