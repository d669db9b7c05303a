"""Golden inputs a device can regenerate bit-exactly from a seed.

A golden case may carry a real image, or just a seed: then the input tensor is produced by
:func:`seeded_input`, which uses only integer arithmetic (SplitMix64) and an exact conversion to
float32, so every platform and every NumPy version yields the same bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def seeded_input(seed: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Uniform values in [-1, 1) as float32, from SplitMix64 seeded with `seed`."""
    if not 0 <= seed < 2**63:
        raise ValueError("seed must lie in [0, 2^63)")
    count = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + _GOLDEN_GAMMA * np.arange(1, count + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    # The top 24 bits are exactly representable in float32: (k / 2^23) - 1 lies in [-1, 1).
    top = (z >> np.uint64(40)).astype(np.float32)
    return (top / np.float32(2**23) - np.float32(1.0)).astype(np.float32).reshape(shape)
