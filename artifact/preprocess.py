"""The one definition of how an RGB image becomes the model's input tensor.

Builder (golden expectations), agent (golden checks and `/predict`) and tests all call this, so the
bits a device feeds the model are the bits the publisher computed its expected logits from. Image
decoding and resizing happen in the caller (PIL); this part is plain float32 arithmetic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .golden import seeded_input
from .manifest import GoldenCase, Manifest, Preprocess


def image_to_input(rgb: npt.NDArray[np.uint8], pre: Preprocess) -> npt.NDArray[np.float32]:
    """(size, size, 3) uint8 RGB → (1, 3, size, size) float32 (or NHWC), scaled to [0, 1] and normalised."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] != pre.size or rgb.shape[1] != pre.size:
        raise ValueError(f"image is {rgb.shape[1]}×{rgb.shape[0]}; resize it to {pre.size}×{pre.size} first")
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    x = (rgb.astype(np.float32) / np.float32(255.0) - mean) / std  # (S, S, 3)
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)  # (3, S, S)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def input_shape(pre: Preprocess) -> tuple[int, int, int, int]:
    s = pre.size
    return (1, 3, s, s) if pre.layout == "NCHW" else (1, s, s, 3)


def golden_seed_input(case: GoldenCase, manifest: Manifest) -> npt.NDArray[np.float32]:
    """The input tensor of a seed-based golden case, regenerated bit-exactly."""
    if case.seed is None:
        raise ValueError("this golden case carries an image, not a seed")
    return seeded_input(case.seed, input_shape(manifest.preprocess))
