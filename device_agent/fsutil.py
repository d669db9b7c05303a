"""Atomic files and the directory lock: the only way the agent writes its state to disk.

Files are replaced with `artifact.write_atomic` (temp file in the same directory, fsync, rename,
fsync of the directory), the writer every part shares: a reader sees the old content or the new
one, never a torn mix, even after a kill -9 or a power cut.

`durable=False` skips the fsyncs but keeps the atomic rename: the fleet simulator runs a thousand
devices in one process on one disk, where power-loss durability means nothing and fsyncs would
serialise the whole fleet.

Every write of one device goes through its :class:`Disk` (`AgentConfig.disk`): the one place that
turns ENOSPC into :class:`~device_agent.errors.NoSpaceError`, and the seam where the fault suite
(tests/faults) makes the disk full (:meth:`Disk.fill`) or read-only (:attr:`Disk.read_only`)
without patching the code under test. Reads need no seam: what the agent reads back is untrusted
input anyway, and every reader turns bad content into "reset that file" (docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from artifact import fsync_dir
from artifact import write_atomic as atomic_write

from .errors import DirectoryLockedError, NoSpaceError

log = logging.getLogger(__name__)

__all__ = [
    "DirLock",
    "Disk",
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
    """The parsed file, or None when it is missing. Garbled JSON (bad bytes, bad UTF-8, nesting deep
    enough to exhaust the recursion limit) raises ValueError for the caller to judge."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{path.name}: JSON nested too deeply") from None


def remove_stale_temps(directory: Path) -> None:
    """Temp files left by a writer that was killed between create and replace."""
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _translated(e: OSError, path: Path) -> OSError:
    """ENOSPC (and a full quota) becomes NoSpaceError; any other OSError is the caller's to judge."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(e, NoSpaceError):
        return NoSpaceError(f"no space left on the device writing {path}")
    return e


class Disk:
    """The writes of one device's agent, and the seam where a test breaks them.

    `fill(space)` is the ENOSPC mode: from then on only `space` more bytes fit (in files whose path
    contains `match`, when given), a write that does not fit raises NoSpaceError before touching the
    file, and :meth:`free` reports what is left. `read_only = True` makes every write fail with
    EROFS, like a read-only mount. `clear()` ends both. Left alone, a Disk writes through to the OS.
    """

    def __init__(self) -> None:
        self.read_only = False
        self._space: int | None = None
        self._match: str | None = None
        self._lock = threading.Lock()

    def fill(self, space: int = 0, *, match: str | None = None) -> None:
        with self._lock:
            self._space, self._match = space, match

    def clear(self) -> None:
        with self._lock:
            self._space, self._match, self.read_only = None, None, False

    def _limited(self, path: Path) -> bool:
        return self._space is not None and (self._match is None or self._match in str(path))

    def charge(self, path: Path, size: int) -> None:
        """Account for `size` bytes about to be written to `path`; raise as the OS would if they cannot be."""
        if self.read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        with self._lock:
            if self._space is not None and self._limited(path):
                if size > self._space:
                    raise NoSpaceError(f"no space left on the device writing {path}")
                self._space -= size

    def free(self, path: Path) -> int:
        """Bytes that can still be written under `path` (shutil.disk_usage, or the fault mode's budget)."""
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            free = 0
        with self._lock:
            if self._space is not None and (self._match is None or self._match in str(path)):
                free = min(free, self._space)
        return 0 if self.read_only else free

    def write_atomic(self, path: Path, data: bytes | memoryview, *, mode: int = 0o644, durable: bool = True) -> None:
        try:
            self.charge(path, len(data))
            atomic_write(path, data, mode=mode, durable=durable)
        except OSError as e:
            raise _translated(e, path) from e

    def write_json(self, path: Path, value: Any, *, mode: int = 0o644, durable: bool = True) -> None:
        data = json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"
        self.write_atomic(path, data, mode=mode, durable=durable)

    def append(self, path: Path, data: bytes, *, durable: bool = True) -> None:
        """Append `data` in one write (a torn tail after ENOSPC is the reader's to drop)."""
        try:
            self.charge(path, len(data))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise _translated(e, path) from e

    @contextlib.contextmanager
    def appending(self, path: Path) -> Iterator[Appender]:
        """A file opened for appending chunks (a download); its writes are charged one by one."""
        try:
            f = path.open("ab")
        except OSError as e:
            raise _translated(e, path) from e
        with f:
            yield Appender(self, path, f)

    def make_dir(self, path: Path, *, mode: int = 0o755) -> bool:
        """Make sure `path` is a directory. A file in its place is removed first (True: it was reset)."""
        reset = False
        if path.exists() and not path.is_dir():
            log.warning("%s is not a directory; replacing it with one", path)
            self.charge(path, 0)
            path.unlink()
            reset = True
        if not path.is_dir():
            self.charge(path, 0)
            path.mkdir(mode=mode, parents=True, exist_ok=True)
        return reset

    def open_lock(self, path: Path) -> int:
        """A read-write fd on the lock file, created if needed (raises OSError on a read-only directory)."""
        self.charge(path, 0)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


class Appender:
    """The writing end of :meth:`Disk.appending`."""

    def __init__(self, disk: Disk, path: Path, f: IO[bytes]) -> None:
        self._disk, self._path, self._f = disk, path, f

    def write(self, chunk: bytes) -> None:
        try:
            self._disk.charge(self._path, len(chunk))
            self._f.write(chunk)
        except OSError as e:
            raise _translated(e, self._path) from e

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise _translated(e, self._path) from e


class DirLock:
    """An exclusive `flock` on DIR/lock: two agents on one model directory would corrupt each other.

    The kernel drops the lock when the process dies, kill -9 included, so a crash never leaves
    a stale lock behind. On a directory the agent cannot write (a read-only mount), the lock is
    taken on the directory itself, opened read-only, and :attr:`writable` is False: the agent then
    serves what is installed and reports that updates are impossible.
    """

    def __init__(self, directory: Path, disk: Disk | None = None) -> None:
        self.path = directory / "lock"
        self.disk = disk or Disk()
        self.writable = True
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = self.disk.open_lock(self.path)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            log.error("%s is not writable (%s): serving read-only, updates impossible", self.path.parent, e)
            fd = os.open(self.path.parent, os.O_RDONLY)
            self.writable = False
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
