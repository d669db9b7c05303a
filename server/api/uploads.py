"""Request bodies too big to hold twice: streamed to a spool file under the body limit.

Spool files live in a directory of their own (``Settings.upload_spool``) and are named
``ota-upload-PID-RANDOM``: the request that made one deletes it when it ends, however it ends, and
:func:`sweep_spool` removes at start what killed processes left behind (files of processes that
no longer run, or older than a day), never a file another live worker is still writing.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from fastapi import Request
from starlette.requests import ClientDisconnect

from ..errors import BadRequestError, StorageUnavailableError
from ..storage.leftovers import is_leftover
from .problems import BODY_LIMIT_KEY

PREFIX = "ota-upload-"
log = logging.getLogger("ota.uploads")


def sweep_spool(directory: Path) -> int:
    """Remove spooled bodies that killed processes left behind; returns how many."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    except OSError as e:  # not fatal: an upload that cannot be spooled gets a 503
        log.warning("cannot read the upload spool %s: %s", directory, e)
        return 0
    for entry in entries:
        if not entry.name.startswith(PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            pid_text = entry.name[len(PREFIX) :].split("-", 1)[0]
            if is_leftover(pid_text, entry.stat().st_mtime, now=now):
                os.unlink(entry.path)
                removed += 1
        except OSError as e:
            log.warning("cannot remove spooled upload %s: %s", entry.path, e)
    if removed:
        log.info("removed %d spooled upload(s) left by stopped processes in %s", removed, directory)
    return removed


async def spool_body(request: Request, *, limit: int, directory: Path) -> Path:
    """Stream the body to a spool file (the caller deletes it). The :class:`BodyLimit` middleware
    refuses it with 413 as soon as it passes `limit` — or before a byte is read, if Content-Length
    already says so."""
    request.scope[BODY_LIMIT_KEY] = limit
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", dir=directory)
    except OSError as e:
        raise StorageUnavailableError(f"cannot spool the upload: {e.strerror or e}") from e
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
    except ClientDisconnect as e:
        path.unlink(missing_ok=True)
        raise BadRequestError("the request body ended early (client disconnected or body over the limit)") from e
    except OSError as e:
        path.unlink(missing_ok=True)
        raise StorageUnavailableError(f"cannot spool the upload: {e.strerror or e}") from e
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
