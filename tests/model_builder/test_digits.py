"""The real data set the builder ships: scikit-learn's handwritten digits as an image folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_builder.cli import main
from model_builder.data import load_datasets
from model_builder.digits import DIGITS, load_digit_scans, make_digits_dataset

from .test_compress import _fails_in_one_line


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_the_whole_set_splits_per_class_into_1438_train_and_359_val(tmp_path: Path) -> None:
    counts = make_digits_dataset(tmp_path / "d", size=64)
    assert counts == {"train": 1438, "val": 359}
    train, val = load_datasets(tmp_path / "d", 64)  # the builder's own reader takes it as its split
    assert train.labels == list(DIGITS) and (len(train), len(val)) == (1438, 359)
    per_class = np.bincount(val.targets.numpy(), minlength=10)
    assert per_class.min() >= 34 and per_class.max() <= 37  # 20 % of each class (174-183 scans) held out
    scans, _targets = load_digit_scans()
    assert len(scans) == 1797
    seen = {hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in train.images}
    assert not seen & {hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in val.images}  # held out


def test_images_are_the_scans_upscaled_and_the_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    make_digits_dataset(tmp_path / "a", size=32, seed=3, per_class=3, val_per_class=1)
    make_digits_dataset(tmp_path / "b", size=32, seed=3, per_class=3, val_per_class=1)
    make_digits_dataset(tmp_path / "c", size=32, seed=4, per_class=3, val_per_class=1)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(a) == 40 and a == b and set(a) == set(c) and a != c
    image = Image.open(tmp_path / "a" / "train" / "0" / "00000.png")
    assert image.mode == "L" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert pixels.max() > 200 and pixels.min() < 30  # ink on a dark background, the scans' full range
    scans, targets = load_digit_scans()
    small = np.asarray(image.resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    zeros = scans[targets == 0].reshape(-1, 64).astype(np.float64)
    assert np.abs(zeros - small.reshape(1, 64)).mean(1).min() < 20  # it is one of the real zeros, upscaled


def test_make_dataset_digits_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-dataset", "digits", "--out", str(tmp_path / "d"), "--per-class", "2", "--val-per-class", "1"]
    assert main(argv) == 0
    assert "wrote 20 training and 10 validation images (digits" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d" / "val").iterdir()) == list(DIGITS)
    _fails_in_one_line(capsys, argv, "not an empty folder")
    _fails_in_one_line(capsys, ["make-dataset", "digits", "--out", str(tmp_path / "e"), "--size", "8"], "--size >= 16")
