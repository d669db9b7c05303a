"""Training and evaluation as plain functions, checkpoints that rebuild their model.

A run directory holds:

- ``best.pt``: the best epoch by validation accuracy, a dict with ``model`` (the
  :class:`SqueezeNetConfig` fields), ``labels``, ``preprocess`` ``{size, mean, std, layout}``,
  ``metrics``, ``train`` (the arguments of the run) and ``state_dict``. Only plain types and tensors,
  so it loads with ``torch.load(weights_only=True)``: opening a checkpoint never runs code. Its
  typed shape, reader and writer are in :mod:`model_builder.checkpoint`.
- ``samples.npz``: up to 16 validation images (uint8, NHWC, already resized) with their targets, so
  that export and packaging check the model on real images even when the dataset has moved.
- ``run.json``: the same metadata, per-epoch history and timings, for people.

Determinism: the seed fixes the initial weights, the shuffling and the augmentation (one generator);
on CPU with the same thread count two runs give bit-identical weights.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]

from model_builder.allocator import keep_freed_memory
from model_builder.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointPreprocess,
    load_checkpoint,
    save_checkpoint,
    torch_load,
)
from model_builder.data import MEAN, STD, ImageSet, batches, load_datasets
from model_builder.errors import TrainError
from model_builder.fsutil import write_atomic
from model_builder.squeezenet import SqueezeNet, SqueezeNetConfig, count_parameters

N_SAMPLES = 16
# conv10 is followed by a ReLU (torchvision, and the paper). From torchvision's zero bias, Adam drives
# every logit below zero within ~50 steps on a small dataset, long before the features carry signal,
# and a dead ReLU never recovers (loss pinned at ln K). Starting the bias at 1 keeps the logits alive
# while the features learn; measured on the shapes data: stuck at 10 % vs. learning from step ~150.
CLASSIFIER_BIAS_START = 1.0


@dataclass
class TrainConfig:
    """The arguments of one run; stored in the checkpoint so a run can be explained and repeated."""

    data: str
    out: str
    val: str | None = None
    arch: str | None = None  # None: the parent's arch when --init has one, else squeezenet1_1
    bypass: str | None = None
    dropout: float | None = None  # None: the parent's, else torchvision's 0.5
    epochs: int = 40
    image_size: int = 64
    batch_size: int = 64
    lr: float = 5e-4  # AdamW peak; at 1e-3 the BatchNorm-free net stayed at chance on 2 of 3 seeds (shapes)
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    seed: int = 0
    init: str | None = None
    freeze_features: bool = False
    val_fraction: float = 0.2
    device: str | None = None  # None: CUDA when available, else CPU
    threads: int | None = None  # None: one per core (torch's default); fixes the result on CPU
    model: dict[str, float | int] = field(default_factory=dict)  # metaparameter overrides (design-space sweeps)
    channels_last: bool = True  # measured 1.3-1.5x faster on a 2-core CPU at 64 px
    progress: bool = True


@dataclass
class Parent:
    """Weights to start from: a run, a checkpoint, or a raw (e.g. torchvision) state_dict."""

    source: str
    config: SqueezeNetConfig
    labels: list[str] | None
    state_dict: dict[str, torch.Tensor]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    val_accuracy: float
    val_loss: float
    params: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_from_checkpoint(ckpt: Checkpoint) -> SqueezeNet:
    """Rebuild the model a checkpoint describes, in eval mode."""
    model = SqueezeNet(SqueezeNetConfig.from_dict(ckpt["model"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()


def _infer_config(state: dict[str, torch.Tensor], source: str) -> SqueezeNetConfig:
    """Arch, bypass and class count of a raw state_dict from its tensor shapes (torchvision layout)."""
    stem = state.get("features.0.weight")
    head = state.get("classifier.1.weight")
    if stem is None or head is None:
        raise TrainError(f"{source} is not a SqueezeNet state_dict (no features.0.weight / classifier.1.weight)")
    arch = {7: "squeezenet1_0", 3: "squeezenet1_1"}.get(int(stem.shape[-1]))
    if arch is None:
        raise TrainError(f"{source}: a {stem.shape[-1]}x{stem.shape[-1]} stem matches no SqueezeNet preset")
    bypass = "complex" if any(".bypass." in k for k in state) else "none"
    return SqueezeNetConfig(arch=arch, bypass=bypass, num_classes=int(head.shape[0]))


def load_parent(path: str | Path) -> Parent:
    """Resolve ``--init``: a run directory, one of our checkpoints, or a raw SqueezeNet state_dict."""
    p = Path(path)
    if p.is_dir() or (p.is_file() and _is_ours(p)):
        ckpt = load_checkpoint(p)
        return Parent(str(p), SqueezeNetConfig.from_dict(ckpt["model"]), list(ckpt["labels"]), ckpt["state_dict"])
    if not p.exists():
        raise TrainError(f"--init {p}: no such run directory or checkpoint file")
    state = torch_load(p)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common wrapper: {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainError(f"--init {p} holds no state_dict of tensors")
    return Parent(str(p), _infer_config(state, str(p)), None, state)


def _is_ours(p: Path) -> bool:
    try:
        ckpt = torch_load(p)
    except TrainError:
        return False  # load_parent reports it, with the message, when it loads the file itself
    return isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT


def apply_parent(model: SqueezeNet, parent: Parent, keep_classifier: bool) -> list[str]:
    """Copy the parent's weights in; returns human notes on what was left at its fresh initialisation."""
    own = model.state_dict()
    state = {k: v for k, v in parent.state_dict.items() if keep_classifier or not k.startswith("classifier.")}
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise TrainError(f"--init {parent.source} has tensors this model lacks: {', '.join(unexpected[:4])}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise TrainError(
                f"--init {parent.source}: {k} has shape {list(v.shape)}, this model needs {list(own[k].shape)}"
            )
    missing = sorted(k for k in set(own) - set(state) if keep_classifier or not k.startswith("classifier."))
    not_bypass = [k for k in missing if ".bypass." not in k]
    if not_bypass:
        raise TrainError(f"--init {parent.source} lacks tensors this model needs: {', '.join(not_bypass[:4])}")
    model.load_state_dict(state, strict=False)
    return [f"bypass convolutions start fresh ({len(missing)} tensors not in the parent)"] if missing else []


def evaluate(model: torch.nn.Module, data: ImageSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over ``data`` (no augmentation, eval mode)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for x, y in batches(data, batch_size):
            logits = model(x.to(device))  # (B, K)
            loss_sum += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += int((logits.argmax(1).cpu() == y).sum())
    return loss_sum / len(data), correct / len(data)


def train_one_epoch(
    model: torch.nn.Module,
    data: ImageSet,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    batch_size: int,
    device: torch.device,
    bar: tqdm[Any],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """One pass over shuffled, augmented ``data``; returns mean loss and accuracy on what it saw."""
    model.train()
    loss_sum, correct = 0.0, 0
    for x, y in batches(data, batch_size, generator, train=True):
        x, y = x.to(device, memory_format=memory_format), y.to(device)
        logits = model(x)  # (B, K)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's stubs leave backward untyped
        optimizer.step()
        schedule.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        bar.update(len(y))
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    return loss_sum / len(data), correct / len(data)


def _save_samples(run_dir: Path, val: ImageSet) -> None:
    """Keep a few validation images, one class after another, for export checks and golden sets."""
    per_class = [torch.nonzero(val.targets == c).flatten().tolist() for c in range(len(val.labels))]
    picks: list[int] = []
    while len(picks) < min(N_SAMPLES, len(val)):
        for idx in per_class:
            if idx and len(picks) < N_SAMPLES:
                picks.append(idx.pop(0))
    images = val.images[picks].permute(0, 2, 3, 1).contiguous().numpy()  # (n, S, S, 3) uint8
    buf = io.BytesIO()
    np.savez(buf, images=images, targets=val.targets[picks].numpy(), paths=np.array([val.paths[i] for i in picks]))
    write_atomic(run_dir / "samples.npz", buf.getvalue())


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def build_model(cfg: TrainConfig, labels: list[str], notes: list[str]) -> tuple[SqueezeNet, Parent | None]:
    """The model to train: fresh from ``cfg.seed``, or the ``--init`` parent's weights (notes appended)."""
    parent = load_parent(cfg.init) if cfg.init else None
    base = parent.config if parent else SqueezeNetConfig()
    if parent and cfg.arch is not None and cfg.arch != parent.config.arch:
        raise TrainError(f"--arch {cfg.arch} differs from the parent's {parent.config.arch}")
    if parent and cfg.model:
        raise TrainError("metaparameter overrides change the architecture; they cannot start from --init")
    config = SqueezeNetConfig(
        **{
            **base.to_dict(),
            **cfg.model,
            "arch": cfg.arch or base.arch,
            "bypass": cfg.bypass or base.bypass,
            "dropout": base.dropout if cfg.dropout is None else cfg.dropout,
            "num_classes": len(labels),
        }
    )
    torch.manual_seed(cfg.seed)
    model = SqueezeNet(config)
    fresh_head = True
    if parent:
        fresh_head = parent.config.num_classes != config.num_classes or parent.labels not in (None, labels)
        if fresh_head:
            old = f"{parent.config.num_classes} classes" if parent.labels is None else f"labels {parent.labels}"
            notes.append(f"parent has {old}, data has {labels}: classifier re-initialised")
        notes += apply_parent(model, parent, keep_classifier=not fresh_head)
    head = model.classifier[1]
    if fresh_head and isinstance(head, nn.Conv2d) and head.bias is not None:
        nn.init.constant_(head.bias, CLASSIFIER_BIAS_START)
    if cfg.freeze_features:
        model.features.requires_grad_(False)
    return model, parent


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train a SqueezeNet on an image folder and keep the best epoch in ``cfg.out``."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise TrainError("epochs and batch size must be >= 1 and the learning rate > 0")
    if cfg.image_size < 64:
        raise TrainError(f"image size {cfg.image_size} is below the 64 px SqueezeNet needs here")
    keep_freed_memory()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    train_set, val_set = load_datasets(cfg.data, cfg.image_size, cfg.val, cfg.val_fraction, cfg.seed)
    notes: list[str] = []
    skipped = train_set.skipped + ([] if val_set.skipped is train_set.skipped else val_set.skipped)
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    model, parent = build_model(cfg, train_set.labels, notes)
    config = model.config
    for n in notes:
        log(f"note: {n}")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack memory_format
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train_set) / cfg.batch_size)
    warmup = max(1, min(steps // 2, round(cfg.warmup_epochs * steps / cfg.epochs)))
    # Linear warm-up then cosine decay: without BatchNorm, SqueezeNet diverges at a cold full LR.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_samples(run_dir, val_set)
    preprocess: CheckpointPreprocess = {"size": cfg.image_size, "mean": list(MEAN), "std": list(STD), "layout": "NCHW"}
    params = count_parameters(model)
    log(
        f"{config.arch} ({config.bypass} bypass), {params:,} parameters, {len(train_set)} train / "
        f"{len(val_set)} val images, {len(train_set.labels)} classes, {device}, {torch.get_num_threads()} threads"
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] = {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0}
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        with tqdm(
            total=len(train_set),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="img",
            file=sys.stderr,
            leave=False,
            disable=not cfg.progress,
        ) as bar:
            tr_loss, tr_acc = train_one_epoch(
                model, train_set, optimizer, schedule, generator, cfg.batch_size, device, bar, fmt
            )
        train_s = time.perf_counter() - t0
        va_loss, va_acc = evaluate(model, val_set, cfg.batch_size, device)
        row = {
            "epoch": epoch,
            "train_loss": tr_loss,
            "train_accuracy": tr_acc,
            "val_loss": va_loss,
            "val_accuracy": va_acc,
            "seconds": time.perf_counter() - t0,
            "images_per_s": len(train_set) / train_s,
        }
        history.append(row)
        improved = (va_acc, -va_loss) > (best["val_accuracy"], -best["val_loss"])
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {tr_loss:.4f} acc {tr_acc:.2%}  "
            f"val loss {va_loss:.4f} acc {va_acc:.2%}  {row['images_per_s']:.0f} img/s"
            + ("  *best" if improved else "")
        )
        if improved:
            best = {"val_accuracy": va_acc, "val_loss": va_loss, "epoch": epoch}
            ckpt: Checkpoint = {
                "format": CHECKPOINT_FORMAT,
                "model": config.to_dict(),
                "labels": list(train_set.labels),
                "preprocess": preprocess,
                "metrics": {
                    "val_accuracy": va_acc,
                    "val_loss": va_loss,
                    "epoch": epoch,
                    "params": params,
                    "train_loss": tr_loss,
                    "train_accuracy": tr_acc,
                },
                "train": asdict(cfg),
                "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
            save_checkpoint(run_dir / "best.pt", ckpt)
    seconds = time.perf_counter() - started
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": config.to_dict(),
        "params": params,
        "labels": train_set.labels,
        "preprocess": preprocess,
        "best": best,
        "train": asdict(cfg),
        "notes": notes,
        "history": history,
        "data": {
            "train_images": len(train_set),
            "val_images": len(val_set),
            "skipped_images": [list(s) for s in skipped],
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "wall_seconds": seconds,
        "parent": parent.source if parent else None,
    }
    text = json.dumps(meta, indent=2) + "\n"
    write_atomic(run_dir / "run.json", text.encode())
    return TrainResult(
        run_dir, int(best["epoch"]), best["val_accuracy"], best["val_loss"], params, seconds, history, notes
    )
