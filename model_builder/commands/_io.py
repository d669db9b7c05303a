"""File helpers shared by the commands: clear errors for missing inputs (outputs: ``fsutil.write_atomic``)."""

from __future__ import annotations

from pathlib import Path

from model_builder.errors import CommandError


def read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise CommandError(f"{what} {path} does not exist") from e
    except IsADirectoryError as e:
        raise CommandError(f"{what} {path} is a directory, not a file") from e
    except OSError as e:
        raise CommandError(f"cannot read {what} {path}: {e.strerror}") from e
