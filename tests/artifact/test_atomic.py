"""The one atomic writer: old content or new after a crash, the exact mode, and a durable rename."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import artifact as A


@pytest.fixture()
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync was called on, in order."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_replaces_the_file_with_exactly_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        A.write_atomic(path, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left behind


def test_a_durable_write_fsyncs_the_file_then_its_directory(tmp_path: Path, fsynced: list[str]) -> None:
    A.write_atomic(tmp_path / "model.onnx", b"x" * 100_000)
    assert len(fsynced) == 2
    assert fsynced[0].startswith(str(tmp_path / ".model.onnx."))  # the temp file, before the rename
    assert fsynced[1] == str(tmp_path)  # the directory: the rename survives a power cut


def test_a_non_durable_write_fsyncs_nothing(tmp_path: Path, fsynced: list[str]) -> None:
    A.write_atomic(tmp_path / "pointer", b"a\n", durable=False)
    assert fsynced == []
    assert (tmp_path / "pointer").read_bytes() == b"a\n"


def test_key_files_are_durable_too(tmp_path: Path, fsynced: list[str]) -> None:
    A.save_private_key(A.generate_key(), tmp_path / "signing.key")
    assert fsynced[-1] == str(tmp_path)


def test_a_failed_rename_leaves_the_target_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        A.write_atomic(target, b"data")
    assert (target / "inside").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
