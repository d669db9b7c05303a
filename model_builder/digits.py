"""The handwritten digits scikit-learn ships, as an image folder: a small *real* data set, no download.

1,797 scans of handwritten digits (UCI ML "Optical Recognition of Handwritten Digits", 43 writers),
8×8 pixels of 17 grey levels, about 180 per class. They are upscaled (bicubic) to the model's input
size and written as grayscale PNGs, ``out/{train,val}/<digit>/NNNNN.png``, split per class by a seed
(20 % held out: 1,437 train / 360 val). It is the data set of the issue that made compression's
schedule count optimizer steps: about 1,000 real images is what a user's first set looks like, and
a schedule tuned on 5,000 clean synthetic shapes gave it a fifth of the fine-tuning it needs.

scikit-learn is imported only here, when the set is asked for (it is a ``builder`` dependency).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm  # type: ignore[import-untyped]

from model_builder.errors import DataError

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
VAL_FRACTION = 0.2


def load_digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8 in 0..255, targets (N,) int64) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits set comes with scikit-learn: pip install 'ota-models[builder]'") from e
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)  # 0..16 → 0..255
    return images, np.asarray(bunch.target, dtype=np.int64)


def make_digits_dataset(
    out: str | Path,
    size: int = 64,
    seed: int = 0,
    per_class: int | None = None,
    val_per_class: int | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Write the digits as ``out/{train,val}/<digit>/NNNNN.png`` (grayscale, ``size`` px); returns counts.

    Each class is shuffled by ``seed`` and its first 20 % held out; ``per_class`` and
    ``val_per_class`` cap the images kept per class (tiny sets for tests). The same arguments always
    give the same files.
    """
    if size < 16 or (per_class is not None and per_class < 1) or (val_per_class is not None and val_per_class < 1):
        raise DataError(f"need size >= 16 and per-class counts >= 1, got size={size}, per_class={per_class}")
    images, targets = load_digit_scans()
    rng = np.random.default_rng(seed)
    out = Path(out)
    plan: list[tuple[str, str, int, np.ndarray]] = []
    for k, name in enumerate(DIGITS):
        members = rng.permutation(np.flatnonzero(targets == k))
        n_val = max(1, round(len(members) * VAL_FRACTION))
        val, train = members[:n_val], members[n_val:]
        train = train[:per_class] if per_class is not None else train
        val = val[:val_per_class] if val_per_class is not None else val
        plan += [("train", name, i, images[j]) for i, j in enumerate(train)]
        plan += [("val", name, i, images[j]) for i, j in enumerate(val)]
    counts = {"train": 0, "val": 0}
    for split_name, name, i, scan in tqdm(plan, unit="img", file=sys.stderr, disable=not progress):
        folder = out / split_name / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scan, "L").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.png")
        counts[split_name] += 1
    return counts
