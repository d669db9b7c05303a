"""Training: it learns, it is reproducible, its checkpoints rebuild the model, fine-tuning works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_builder.squeezenet import squeezenet1_1
from model_builder.train import TrainError, TrainResult, load_checkpoint, model_from_checkpoint

from .conftest import run_training as _run


def test_short_run_beats_chance(trained_run: TrainResult) -> None:
    assert trained_run.val_accuracy > 0.50  # ten classes: chance is 0.10
    assert trained_run.history[-1]["train_loss"] < trained_run.history[0]["train_loss"]


def test_checkpoint_rebuilds_the_model(trained_run: TrainResult) -> None:
    ckpt = load_checkpoint(trained_run.run_dir)
    assert ckpt["model"]["arch"] == "squeezenet1_1" and ckpt["model"]["num_classes"] == 10
    assert ckpt["labels"][:3] == ["hue0", "hue1", "hue2"]
    assert ckpt["preprocess"] == {
        "size": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "layout": "NCHW",
    }
    assert ckpt["metrics"]["val_accuracy"] == pytest.approx(trained_run.val_accuracy)
    assert ckpt["metrics"]["params"] == 727_626
    model = model_from_checkpoint(ckpt)
    assert not model.training
    meta = json.loads((trained_run.run_dir / "run.json").read_text())
    assert meta["best"]["epoch"] == trained_run.best_epoch and len(meta["history"]) == 6
    with np.load(trained_run.run_dir / "samples.npz") as z:
        assert z["images"].shape == (16, 64, 64, 3) and z["images"].dtype == np.uint8
        assert sorted(set(z["targets"].tolist())) == list(range(10))  # spread over the classes


def test_same_seed_gives_identical_weights(colours: Path, tmp_path: Path) -> None:
    a = _run(colours, tmp_path / "a", epochs=1, seed=3)
    b = _run(colours, tmp_path / "b", epochs=1, seed=3)
    c = _run(colours, tmp_path / "c", epochs=1, seed=4)
    sa, sb, sc = (load_checkpoint(r.run_dir)["state_dict"] for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_freeze_features_from_parent_run_leaves_features_bit_identical(
    trained_run: TrainResult, colours: Path, tmp_path: Path
) -> None:
    parent = load_checkpoint(trained_run.run_dir)["state_dict"]
    child = _run(colours, tmp_path / "child", epochs=1, init=str(trained_run.run_dir), freeze_features=True)
    state = load_checkpoint(child.run_dir)["state_dict"]
    features = [k for k in state if k.startswith("features.")]
    assert features and all(torch.equal(state[k], parent[k]) for k in features)
    assert not torch.equal(state["classifier.1.weight"], parent["classifier.1.weight"])  # the head did train
    assert json.loads((child.run_dir / "run.json").read_text())["parent"] == str(trained_run.run_dir)


def test_init_from_torchvision_state_dict_reinitialises_the_classifier(colours: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    foreign = squeezenet1_1().state_dict()  # a torchvision-layout file with 1000 classes
    torch.save(foreign, tmp_path / "squeezenet1_1.pth")
    result = _run(colours, tmp_path / "run", epochs=1, init=str(tmp_path / "squeezenet1_1.pth"), freeze_features=True)
    assert any("1000 classes" in n and "re-initialised" in n for n in result.notes)
    state = load_checkpoint(result.run_dir)["state_dict"]
    assert state["classifier.1.weight"].shape == (10, 512, 1, 1)
    assert torch.equal(state["features.12.expand3x3.weight"], foreign["features.12.expand3x3.weight"])


def test_init_with_another_arch_is_refused(trained_run: TrainResult, colours: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="differs from the parent"):
        _run(colours, tmp_path / "x", epochs=1, init=str(trained_run.run_dir), arch="squeezenet1_0")


def test_init_from_a_file_that_is_not_a_checkpoint(colours: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(TrainError, match="not a readable torch checkpoint"):
        _run(colours, tmp_path / "x", epochs=1, init=str(tmp_path / "junk.pt"))
