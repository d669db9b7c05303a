"""Keep freed tensor memory in the process instead of handing it back to the kernel after every step.

glibc's malloc serves blocks above its mmap threshold (128 kB at first, raised dynamically up to 32 MB)
with fresh ``mmap`` calls and trims the heap top when more than 128 kB is free, so every training step
returned its activation buffers to the kernel and faulted the same pages in again (zero-filled) on the
next one. On a 2-core AVX2 machine that was 15-20 % of the process's CPU time in the kernel, and training
ran at 266-301 img/s instead of 352-406 img/s (SqueezeNet 1.1, 64 px, batch 64, side by side in one run,
``python -m bench.allocator``). These are the same knobs as the ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` environment variables, set from inside.

Elsewhere than glibc (musl, macOS, Windows) this does nothing; it never fails a run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum: batch activations (≈ 16 MB at 64 px, batch 64) stay in the heap
TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of freed heap for the next step
TOP_PAD = 256 * 1024 * 1024

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a training loop, once per process; returns whether it applied."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    return _done
