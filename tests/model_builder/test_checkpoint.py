"""The checkpoint reader and writer: what goes in comes back, and a broken file is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_builder.checkpoint import CHECKPOINT_FORMAT, Checkpoint, load_checkpoint, save_checkpoint
from model_builder.cli import main
from model_builder.errors import TrainError


def _checkpoint() -> Checkpoint:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"arch": "squeezenet1_1", "num_classes": 2},
        "labels": ["cat", "dog"],
        "preprocess": {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "layout": "NCHW"},
        "metrics": {"val_accuracy": 0.75, "val_loss": 0.5, "epoch": 3, "params": 10},
        "train": {"data": "/data", "seed": 0},
        "state_dict": {"classifier.1.bias": torch.tensor([1.0, 2.0])},
    }


def test_a_saved_checkpoint_loads_back_key_for_key_without_running_code(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best.pt", _checkpoint())
    raw = torch.load(tmp_path / "best.pt", weights_only=True)  # plain types and tensors only
    assert list(raw) == list(_checkpoint())  # the on-disk key order is the writer's
    ckpt = load_checkpoint(tmp_path)  # a run directory names its best.pt
    assert ckpt["labels"] == ["cat", "dog"] and ckpt["metrics"]["epoch"] == 3
    assert torch.equal(ckpt["state_dict"]["classifier.1.bias"], torch.tensor([1.0, 2.0]))


def test_another_format_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best.pt", {**_checkpoint(), "format": "model_builder.checkpoint/2"})
    with pytest.raises(TrainError, match="is not a model_builder checkpoint"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_without_weights_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = dict(_checkpoint())
    del damaged["state_dict"]
    torch.save(damaged, tmp_path / "best.pt")
    with pytest.raises(TrainError, match="no state_dict"):
        load_checkpoint(tmp_path / "best.pt")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("model-builder: error:") and "no state_dict" in err[0]
