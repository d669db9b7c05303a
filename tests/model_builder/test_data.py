"""Image folders and the shapes generator: determinism and clear answers to bad data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_builder.data import (
    SHAPES,
    DataError,
    DataWarning,
    augment,
    load_datasets,
    load_image_folder,
    make_shapes_dataset,
    split,
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def _write(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 30)).save(path)


def test_shapes_dataset_is_deterministic_under_seed(tmp_path: Path) -> None:
    counts = make_shapes_dataset(tmp_path / "a", per_class=3, size=48, seed=7, val_per_class=2)
    make_shapes_dataset(tmp_path / "b", per_class=3, size=48, seed=7, val_per_class=2)
    make_shapes_dataset(tmp_path / "c", per_class=3, size=48, seed=8, val_per_class=2)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert counts == {"train": 30, "val": 20}
    assert len(a) == 50 and a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == sorted(SHAPES)


def test_shapes_images_do_not_depend_on_how_many_are_written(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "small", per_class=2, size=48, seed=3, val_per_class=1)
    make_shapes_dataset(tmp_path / "large", per_class=4, size=48, seed=3, val_per_class=1)
    small, large = _digest(tmp_path / "small"), _digest(tmp_path / "large")
    assert all(large[k] == v for k, v in small.items())


def test_shapes_drawn_by_several_processes_are_the_same_bytes_as_by_one(tmp_path: Path) -> None:
    one = make_shapes_dataset(tmp_path / "one", per_class=12, size=48, seed=5, val_per_class=3, workers=1)
    two = make_shapes_dataset(tmp_path / "two", per_class=12, size=48, seed=5, val_per_class=3, workers=2)
    assert one == two == {"train": 120, "val": 30}
    a, b = _digest(tmp_path / "one"), _digest(tmp_path / "two")
    assert len(a) == 150 and a == b


def test_shapes_vary_in_colour_and_position(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path, per_class=6, size=48, seed=0, val_per_class=1)
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "train" / "circle").glob("*.png"))])
    assert images.shape == (6, 48, 48, 3)
    assert images.reshape(6, -1).std(0).mean() > 30  # no fixed template a linear model could memorise


def test_loads_class_folders_and_resizes_mixed_sizes(tmp_path: Path) -> None:
    _write(tmp_path / "cats" / "a.png", (80, 40))
    _write(tmp_path / "cats" / "b.jpg", (20, 20), mode="L")  # grayscale JPEG, smaller than the model size
    _write(tmp_path / "dogs" / "c.PNG", (33, 77))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, 32)
    assert data.labels == ["cats", "dogs"]
    assert data.images.shape == (3, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.targets.tolist() == [0, 0, 1]


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_image_folder(tmp_path, 64)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 64)


def test_single_class_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="single class"):
        load_image_folder(tmp_path, 64)


def test_class_without_images_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no readable"):
        load_image_folder(tmp_path, 64)


def test_corrupt_images_are_counted_and_skipped(tmp_path: Path) -> None:
    for i in range(2):
        _write(tmp_path / "a" / f"{i}.png")
        _write(tmp_path / "b" / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (tmp_path / "b" / "0.png").read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(DataWarning, match="skipped 2 unreadable"):
        data = load_image_folder(tmp_path, 32)
    assert len(data) == 4
    assert sorted(Path(p).name for p, _ in data.skipped) == ["broken.png", "truncated.png"]


def test_validation_folder_with_unknown_class_is_refused(tmp_path: Path) -> None:
    for c in ("a", "b"):
        _write(tmp_path / "train" / c / "0.png")
    _write(tmp_path / "val" / "a" / "0.png")
    _write(tmp_path / "val" / "zebra" / "0.png")
    with pytest.raises(DataError, match="zebra"):
        load_datasets(tmp_path, 32)


def test_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(10):
            _write(tmp_path / c / f"{i}.png", value=i * 20)
    data = load_image_folder(tmp_path, 32)
    tr1, va1 = split(data, 0.2, seed=5)
    tr2, va2 = split(data, 0.2, seed=5)
    _, va3 = split(data, 0.2, seed=6)
    assert va1.paths == va2.paths and tr1.paths == tr2.paths
    assert va1.targets.tolist().count(0) == 2 and va1.targets.tolist().count(1) == 2
    assert not set(va1.paths) & set(tr1.paths)
    assert va1.paths != va3.paths


def test_augmentation_is_deterministic_and_changes_images() -> None:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    c = augment(images, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
