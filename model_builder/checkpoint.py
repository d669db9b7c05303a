"""A run's checkpoint (``best.pt``): its typed shape, one reader and one writer.

On disk a checkpoint is a plain dict of plain types and tensors, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code. :class:`Checkpoint` names
its keys and their types for the type checker; :func:`load_checkpoint` and :func:`save_checkpoint`
are the only functions that touch the file. The keys, in the order they are written:

- ``format``: :data:`CHECKPOINT_FORMAT`;
- ``model``: the :class:`~model_builder.squeezenet.SqueezeNetConfig` fields (``to_dict()``);
- ``labels``: class names, index = output position;
- ``preprocess``: ``{size, mean, std, layout}`` (:class:`CheckpointPreprocess`);
- ``metrics``: validation (and, after compression, compression) figures (:class:`CheckpointMetrics`);
- ``train``: the arguments of the training run (a compressed run keeps its parent's);
- ``compress``, ``compression``: only in a compressed run — its arguments, and the masks /
  codebooks / indices that ``compress --init-from`` reads back (owned by :mod:`model_builder.compress`);
- ``state_dict``: the weights, CPU tensors.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import torch

from model_builder.errors import TrainError
from model_builder.fsutil import write_atomic

CHECKPOINT_FORMAT = "model_builder.checkpoint/1"
# What every checkpoint this package writes holds (``train``, ``compress`` and ``compression`` may be absent).
_REQUIRED = ("model", "labels", "preprocess", "metrics", "state_dict")


class CheckpointPreprocess(TypedDict):
    """How an image becomes the model's input: the manifest's ``preprocess``."""

    size: int
    mean: list[float]
    std: list[float]
    layout: str


class CheckpointMetrics(TypedDict, total=False):
    """Figures of the kept epoch; the second group only in a compressed run."""

    val_accuracy: float
    val_loss: float
    epoch: int
    params: int
    train_loss: float
    train_accuracy: float
    density: float
    bits: int
    method: str
    method_kmeans: int  # 1: the artifact's metrics say which method without a string value
    method_int8: int
    accuracy_before: float  # the parent's validation accuracy, re-measured on the same split
    parent_val_loss: float
    payload_bytes: int
    finetune_steps: int  # optimizer steps of every fine-tuning stage of the compression together


class Checkpoint(TypedDict):
    """The checkpoint dict, key by key (module docstring)."""

    format: str
    model: dict[str, Any]
    labels: list[str]
    preprocess: CheckpointPreprocess
    metrics: CheckpointMetrics
    train: NotRequired[dict[str, Any]]
    compress: NotRequired[dict[str, Any]]
    compression: NotRequired[dict[str, Any]]
    state_dict: dict[str, torch.Tensor]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``best.pt`` (or a run directory holding one) and check that it is ours."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt"
    if not p.is_file():
        raise TrainError(f"no checkpoint at {p}")
    ckpt = torch_load(p)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{p} is not a model_builder checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [key for key in _REQUIRED if key not in ckpt]
    if missing:
        raise TrainError(f"{p} is a damaged model_builder checkpoint: no {', '.join(missing)}")
    return cast(Checkpoint, ckpt)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (a crash leaves the previous checkpoint or this one)."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    write_atomic(path, buf.getvalue())


def torch_load(p: Path) -> Any:
    """``torch.load`` that never runs code from the file and fails in one sentence."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:  # "not a checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"{p} is not a readable torch checkpoint: {first}") from e
