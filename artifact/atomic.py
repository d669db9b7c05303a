"""The one atomic file writer, for every part: the agent installs without the builder or the server,
and all three install `artifact`.

A file is replaced by writing a temporary file in the same directory, fsyncing it, `os.replace`
over the target and fsyncing the directory (python-tuf `_persist_metadata`). A reader therefore
sees the old content or the new one, never a torn mix, even after a kill -9 or a power cut.

`durable=False` skips the fsyncs but keeps the atomic rename (the agent's fleet simulator, and
writes whose fsync the caller batches). Temporary names are ``.NAME.PID.THREAD.tmp``: unique per
writer, and easy to sweep after a crash.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str], data: bytes | memoryview, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace `path` with `data` atomically; the file gets exactly `mode` (whatever the umask)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask and ignored for an existing file
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
