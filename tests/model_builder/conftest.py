"""Shared, session-scoped fixtures: generating and training are the slow parts, so they run once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_builder.data import make_shapes_dataset
from model_builder.train import TrainConfig, TrainResult, train

# One thread: bit-reproducible results need a fixed count, and on a busy 2-core machine two
# OpenMP threads can run an order of magnitude slower than one.
THREADS = 1


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real generator at test scale: 10 classes × 4 train / 2 val images at 64 px."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, per_class=4, size=64, seed=0, val_per_class=2)
    return root


@pytest.fixture(scope="session")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes told apart by hue under heavy noise: 20 train / 5 val images each.

    SqueezeNet from scratch needs minutes before it leaves chance on the shapes data (see
    bench/train.py); a short training test needs a signal a few epochs can find.
    """
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 5)):
        for k in range(10):
            a = 2 * np.pi * k / 10
            hue = np.array([np.cos(a), np.cos(a - 2.1), np.cos(a + 2.1)]) * 100 + 128
            folder = root / split / f"hue{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(hue + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:02d}.png")
    return root


def run_training(data: Path, out: Path, **kwargs: object) -> TrainResult:
    threads = torch.get_num_threads()
    try:
        defaults: dict[str, object] = {"epochs": 1, "batch_size": 16, "threads": THREADS, "progress": False}
        cfg = TrainConfig(data=str(data), out=str(out), **{**defaults, **kwargs})  # type: ignore[arg-type]
        return train(cfg, log=lambda _line: None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_run(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A short real training run (6 epochs, a few seconds); export and fine-tuning start from it."""
    return run_training(colours, tmp_path_factory.mktemp("run"), epochs=6, seed=0)
