"""File helpers shared by the commands: clear errors for missing inputs, atomic outputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from model_builder.cli import CommandError


def read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise CommandError(f"{what} {path} does not exist") from e
    except IsADirectoryError as e:
        raise CommandError(f"{what} {path} is a directory, not a file") from e
    except OSError as e:
        raise CommandError(f"cannot read {what} {path}: {e.strerror}") from e


def write_output(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write atomically (temp file in the same directory, fsync, rename): a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
