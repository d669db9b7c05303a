"""Temporary files that killed processes left behind: whose are they, and may they go?

Both the blob directory (`write_atomic`'s ``.SHA.PID.THREAD.tmp``) and the upload spool
(``ota-upload-PID-RANDOM``) name their temporary files after the writing process. At start each
sweeps what a killed writer left, and must never remove the file of a writer that still runs
(another worker of this host, writing now). One rule for both, here.
"""

from __future__ import annotations

import os

STALE_SECONDS = 86400.0  # a temporary file this old is a leftover whoever wrote it


def owner_gone(pid_text: str) -> bool:
    """True only when `pid_text` is the number of another process that no longer runs on this host.

    Anything else keeps the file: not a number, this process, a live process, or one this process
    may not signal (it exists).
    """
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or not 0 < pid < 2**22:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, under another user
        pass
    return False


def is_leftover(pid_text: str, mtime: float, *, now: float) -> bool:
    """A temporary file whose writer (`pid_text`) is gone, or that is older than a day."""
    return now - mtime > STALE_SECONDS or owner_gone(pid_text)
