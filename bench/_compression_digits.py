"""The compression bench's rows for a small *real* data set: scikit-learn's handwritten digits (issue 14).

1,438 training / 359 validation scans upscaled to 64 px, SqueezeNet 1.1 trained 30 epochs (as the
issue's user did), then compressed to 33 % / 6 bits with the default schedule (counted in steps,
with its floor) and, for comparison, with the schedule as it was (12 + 4 epochs, no floor).
Goal: within 1.0 point of the fp32 parent, payload ≤ 0.25 MB, compression ≤ 10 minutes here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import artifact as A
from bench._report import log, write_section
from model_builder.compress import CompressConfig, compress_run, evaluate_onnx
from model_builder.data import load_datasets
from model_builder.digits import make_digits_dataset
from model_builder.export import export_bytes
from model_builder.train import TrainConfig, load_checkpoint, model_from_checkpoint, train

MB = 1_000_000
LOSS_GOAL, PAYLOAD_GOAL, SECONDS_GOAL = 1.0, 0.25 * MB, 600.0
PARENT_EPOCHS = 30


@dataclass
class DigitsRow:
    label: str
    accuracy: float
    payload: int
    seconds: float
    steps: str
    loss_points: float | None = None
    cpu_seconds: float | None = None  # process CPU time: what an idle machine would take, on a shared one


def _compress(parent: Path, out: Path, threads: int | None, **kw: Any) -> tuple[dict[str, Any], float]:
    log(f"digits: compress -> {out.name} {kw}")
    t0 = time.perf_counter()
    cfg = CompressConfig(
        run=str(parent), out=str(out), density=0.33, bits=6, threads=threads, progress=False, max_loss=100.0, **kw
    )
    result = compress_run(cfg, log=lambda line: log("  " + line))  # max_loss 100: the bench reports, not refuses
    return result.report, time.perf_counter() - t0


def _row(label: str, report: dict[str, Any], seconds: float) -> DigitsRow:
    sched = report["schedule"]
    per = sched["steps_per_epoch"]
    steps = (
        f"{sched['masked_steps']:,} + {sched['codebook_steps']:,} "
        f"({sched['masked_steps'] / per:.0f} + {sched['codebook_steps'] / per:.0f} epochs)"
    )
    acc = report["accuracy"]
    return DigitsRow(
        label,
        acc["final"],
        report["size"]["compressed"]["payload_bytes"],
        seconds,
        steps,
        (acc["fp32"] - acc["final"]) * 100,
        report.get("cpu_seconds"),
    )


def _given(run: Path, parent: Path | None, old: bool) -> tuple[dict[str, Any], float]:
    """The report of a run compressed beforehand (``--digits-compressed``), checked: 33 % / 6 bits of ``parent``."""
    report: dict[str, Any] = json.loads((run / "compression.json").read_text())
    cfg = report["config"]
    if cfg["method"] != "kmeans" or cfg["bits"] != 6 or abs(cfg["density"] - 0.33) > 1e-9:
        raise SystemExit(f"{run} is not a 33 %, 6-bit k-means compression")
    schedule = (cfg.get("finetune_epochs"), cfg.get("finetune_steps"))
    if schedule != ((4, None) if old else (None, None)):
        raise SystemExit(f"{run} was not compressed with {'--finetune-epochs 4' if old else 'the default schedule'}")
    if parent is None or Path(report["parent"]).resolve() != parent.resolve():
        raise SystemExit(f"{run} was compressed from {report['parent']}, not from --digits-parent {parent}")
    log(f"digits: {run} compressed beforehand ({report['seconds']:.0f} s then)")
    return report, float(report["seconds"])


def digits_section(
    work: Path,
    threads: int | None,
    parent: Path | None,
    old_schedule: bool = True,
    done: tuple[Path | None, Path | None] = (None, None),
) -> tuple[list[str], list[tuple[str, bool, str]]]:
    """Table lines and verdicts of the digits rows (trains the parent unless one is given).

    ``done`` names runs compressed beforehand with ``model-builder compress`` (default schedule,
    ``--finetune-epochs 4``) from ``parent``: their reports are tabulated instead of compressing again,
    and their rows say so (on a loaded machine the bench would otherwise repeat an hour of work).
    """
    data = work / "digits"
    make_digits_dataset(data)
    train_s = 0.0
    if parent is None:
        log(f"digits: training the squeezenet1_1 fp32 parent, {PARENT_EPOCHS} epochs")
        t0 = time.perf_counter()
        parent = train(
            TrainConfig(data=str(data), out=str(work / "digits-fp32"), epochs=PARENT_EPOCHS, threads=threads),
            log=lambda line: log("  " + line),
        ).run_dir
        train_s = time.perf_counter() - t0
    train_set, val_set = load_datasets(data, 64)
    fp32_onnx = export_bytes(model_from_checkpoint(load_checkpoint(parent)), 64)
    fp32_acc = evaluate_onnx(fp32_onnx, val_set)[1]
    rows = [
        DigitsRow(
            "fp32 parent (SqueezeNet 1.1)",
            fp32_acc,
            len(A.encode_payload(fp32_onnx)),
            train_s,
            f"{PARENT_EPOCHS} epochs of training" + ("" if train_s else " (trained beforehand)"),
        )
    ]
    before = " (compressed beforehand)"
    if done[0]:
        report, seconds = _given(done[0], parent, old=False)
    else:
        report, seconds = _compress(parent, work / "digits-6bit", threads)
    new = _row("33 %, 6 bits, default schedule (steps, with a floor)" + (before if done[0] else ""), report, seconds)
    rows.append(new)
    if old_schedule or done[1]:
        old_report, old_seconds = (
            _given(done[1], parent, old=True)
            if done[1]
            else _compress(parent, work / "digits-6bit-old", threads, finetune_epochs=4)
        )
        label = "33 %, 6 bits, the schedule before (--finetune-epochs 4)" + (before if done[1] else "")
        rows.append(_row(label, old_report, old_seconds))
    fmt: Callable[[float | None], str] = lambda x: "" if x is None else f"{x:+.2f}"  # noqa: E731
    lines = [
        f"Digits (scikit-learn's handwritten digits, real scans): {len(train_set):,} train / {len(val_set)} val "
        "images at 64 px, 10 classes. Accuracy: top-1 on the validation split as ONNX Runtime runs the artifact's "
        "model; loss in points against the fp32 parent; steps: masked + centroid fine-tuning optimizer steps "
        "(batch 64); time: wall clock of training (parent) or of `compress`, and its process CPU time (one thread: "
        "about what an idle machine would take; this one is shared).",
        "",
        "| digits | val accuracy | loss (points) | bytes on the air | wall time s | CPU time s | steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        wall = f"{r.seconds:.0f}" if r.seconds else "n/a"
        cpu = f"{r.cpu_seconds:.0f}" if r.cpu_seconds else "not recorded"
        lines.append(
            f"| {r.label} | {r.accuracy:.2%} | {fmt(r.loss_points)} | {r.payload:,} ({r.payload / MB:.3f} MB) | "
            f"{wall} | {cpu} | {r.steps} |"
        )
    parts = {
        "accuracy": new.loss_points is not None and new.loss_points <= LOSS_GOAL,
        "payload": new.payload <= PAYLOAD_GOAL,
        "time": new.seconds <= SECONDS_GOAL,
    }
    marks = ", ".join(f"{k} {'ok' if v else 'missed'}" for k, v in parts.items())
    verdict = (
        "digits (1.1, 33 %, 6 bits, default schedule): loss ≤ 1.0 point, payload ≤ 0.25 MB, compression ≤ 10 min",
        all(parts.values()),
        f"{marks}: loss {new.loss_points:+.2f} points ({fp32_acc:.2%} → {new.accuracy:.2%}), payload "
        f"{new.payload:,} B, {new.seconds:.0f} s wall, {new.steps} steps",
    )
    return lines, [verdict]


def digits_only(
    threads: int | None,
    parent: Path | None,
    old_schedule: bool,
    write: bool,
    done: tuple[Path | None, Path | None] = (None, None),
) -> int:
    """``--only digits``: the digits rows alone, written as their own section of docs/benchmarks.md."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-compression-digits-") as tmp:
        lines, verdicts = digits_section(Path(tmp), threads, parent, old_schedule, done)
    verdict_lines = [f"- verdict ({g}): {'PASS' if ok else 'FAIL'} — {why}" for g, ok, why in verdicts]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = "\n".join(
        [*lines, "", *verdict_lines, "", f"Total benchmark time {time.perf_counter() - started:.0f} s; load average "
         f"at the end {load} (1, 5, 15 min) on this shared machine."]
    )  # fmt: skip
    if parent is not None:
        args = load_checkpoint(parent)["train"]
        body += f"\nParent trained beforehand: `model-builder train --epochs {args['epochs']}` ({parent})."
    for run in (r for r in done if r is not None):
        cfg = json.loads((run / "compression.json").read_text())["config"]
        how = f"--finetune-epochs {cfg['finetune_epochs']}" if cfg.get("finetune_epochs") else "default schedule"
        body += (
            f"\n{run} compressed beforehand: `model-builder compress {cfg['run']} --out {run} --density 0.33 --bits 6 "
            f"--threads {cfg['threads']}` ({how}); its wall time is the one `compress` measured then."
        )
    print(body)
    if write:
        write_section("compression-digits", body)
    return 0 if all(ok for _g, ok, _w in verdicts) else 1
