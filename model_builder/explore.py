"""Design-space exploration, the SqueezeNet paper's method (section 5, Figure 3).

Each variant changes one metaparameter (`squeeze_ratio`, `pct_3x3`, `base_e`, `incr_e`, `freq`),
trains on the same data with the same budget and seed, and lands as one point of model size against
validation accuracy. The CSV keeps every number; the PNG draws the curve like the paper's figure.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from model_builder.errors import ExploreError
from model_builder.squeezenet import SqueezeNetConfig
from model_builder.train import TrainConfig, train

SWEEPABLE = {"squeeze_ratio": float, "pct_3x3": float, "base_e": int, "incr_e": int, "freq": int}


@dataclass(frozen=True)
class Point:
    parameter: str
    value: float
    params: int
    megabytes: float
    val_accuracy: float
    val_loss: float
    seconds: float


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """`squeeze_ratio=0.125,0.25` → ("squeeze_ratio", [0.125, 0.25])."""
    name, sep, values = text.partition("=")
    if not sep or name not in SWEEPABLE:
        raise ExploreError(f"--sweep wants NAME=V1,V2,… with NAME one of {', '.join(SWEEPABLE)}; got {text!r}")
    try:
        parsed = [SWEEPABLE[name](v) for v in values.split(",") if v.strip()]
    except ValueError as e:
        raise ExploreError(f"--sweep {name}: {e}") from e
    if len(parsed) < 2:
        raise ExploreError("a sweep needs at least two values")
    for v in parsed:  # fail before hours of training, not in the middle
        try:
            SqueezeNetConfig(**{name: v})
        except ValueError as e:
            raise ExploreError(f"--sweep {name}={v}: {e}") from e
    return name, parsed


def explore(
    base: TrainConfig, parameter: str, values: list[float], out: Path, log: Callable[[str], None] = print
) -> list[Point]:
    """Train one run per value under `out/<parameter>=<value>/`; write `out/explore.csv` and `.png`."""
    out.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    for i, value in enumerate(values, 1):
        log(f"[{i}/{len(values)}] {parameter}={value}")
        cfg = replace(base, out=str(out / f"{parameter}={value}"), model={parameter: value})
        result = train(cfg, log=lambda line: log("    " + line))
        points.append(
            Point(parameter, value, result.params, result.params * 4 / 1e6, result.val_accuracy, result.val_loss,
                  result.seconds)
        )  # fmt: skip
        write_csv(points, out / "explore.csv")
    plot(points, out / "explore.png")
    return points


def write_csv(points: list[Point], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["parameter", "value", "params", "model_mb_fp32", "val_accuracy", "val_loss", "seconds"])
        for p in points:
            writer.writerow([p.parameter, p.value, p.params, f"{p.megabytes:.3f}", f"{p.val_accuracy:.4f}",
                             f"{p.val_loss:.4f}", f"{p.seconds:.1f}"])  # fmt: skip


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([p.megabytes for p in points], [100 * p.val_accuracy for p in points], "o-")
    for p in points:
        ax.annotate(f"{p.value:g}", (p.megabytes, 100 * p.val_accuracy), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("model size (MB, 32-bit weights)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"SqueezeNet design space: {points[0].parameter}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
