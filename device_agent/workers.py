"""The threads update work runs on: the event loop's default executor, optionally below /predict."""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor


def _lower_priority(niceness: int) -> None:
    """Runs in each update worker thread: Linux keeps a nice value per thread, and the threads these
    workers start (the golden-set pool) inherit it. Raising one's own niceness needs no privilege."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))


def update_executor(niceness: int) -> ThreadPoolExecutor:
    """The event loop's default executor, where delta apply, decode, session build and golden run happen.

    With `niceness` > 0 these threads run below the ones serving /predict: on a saturated device
    inference wins the CPU and the swap waits. The default is 0 because the tail stayed within the
    goal without it (bench/hotswap.py: p99 during swaps 1.3× steady) while swaps took 1.6× longer
    with it; a device whose serving latency matters more than update speed can turn it on.
    """
    workers = min(32, (os.cpu_count() or 1) + 4)
    if niceness <= 0:
        return ThreadPoolExecutor(max_workers=workers)
    return ThreadPoolExecutor(max_workers=workers, initializer=_lower_priority, initargs=(niceness,))
