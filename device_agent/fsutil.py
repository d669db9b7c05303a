"""Atomic files and the directory lock: the only way the agent writes its state to disk.

Files are replaced with `artifact.write_atomic` (temp file in the same directory, fsync, rename,
fsync of the directory), the writer every part shares: a reader sees the old content or the new
one, never a torn mix, even after a kill -9 or a power cut.

`durable=False` skips the fsyncs but keeps the atomic rename: the fleet simulator runs a thousand
devices in one process on one disk, where power-loss durability means nothing and fsyncs would
serialise the whole fleet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from artifact import fsync_dir
from artifact import write_atomic as atomic_write

from .errors import DirectoryLockedError

__all__ = [
    "DirLock",
    "atomic_write",
    "atomic_write_json",
    "fsync_dir",
    "fsync_files",
    "read_json",
    "remove_stale_temps",
]


def fsync_files(paths: list[Path]) -> None:
    """Make files written with `durable=False` durable, and their directories' entries with them."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in {p.parent for p in paths}:
        fsync_dir(directory)


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o644, durable: bool = True) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n", mode=mode, durable=durable)


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing. Garbled JSON raises ValueError for the caller to judge."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(text)


def remove_stale_temps(directory: Path) -> None:
    """Temp files left by a writer that was killed between create and replace."""
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


class DirLock:
    """An exclusive `flock` on DIR/lock: two agents on one model directory would corrupt each other.

    The kernel drops the lock when the process dies, kill -9 included, so a crash never leaves
    a stale lock behind.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryLockedError(f"another device agent is using {self.path.parent}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
