"""Atomic file writes: a crash at any moment leaves the old file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

import artifact as A


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path``'s directory if needed, then :func:`artifact.write_atomic` it (fsynced, directory too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    A.write_atomic(path, data, mode=mode)
