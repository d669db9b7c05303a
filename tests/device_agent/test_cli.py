"""The command line: clear refusals for a bad setup, and one agent per model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent import DirectoryLockedError
from device_agent.cli import main
from device_agent.fsutil import DirLock


def test_second_agent_on_the_same_model_directory_is_refused(tmp_path: Path) -> None:
    first = DirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(DirectoryLockedError):
            DirLock(tmp_path).acquire()
    finally:
        first.release()
    DirLock(tmp_path).acquire()  # released: free again


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trust", "/nonexistent/key.pub", "--enroll-secret", "s"], "key"),
        (["--enroll-secret", "s", "--serve", "nowhere"], "HOST:PORT"),
        ([], "--enroll-secret"),
    ],
)
def test_run_refuses_a_bad_setup_with_a_message(
    extra: list[str], message: str, trust_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--server", "http://127.0.0.1:9", "--model", "shapes", "--model-dir", str(tmp_path / "d")]
    argv += ["--trust", str(trust_file), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_command_line_option_exits_with_usage() -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--frobnicate"])
    assert e.value.code == 2


def test_run_refuses_a_missing_or_bad_root_of_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--server", "http://127.0.0.1:9", "--model", "shapes", "--model-dir", str(tmp_path / "d")]
    argv += ["--enroll-secret", "s"]
    assert main(argv) == 2
    assert "root of trust (--root) or trusted publisher keys (--trust)" in capsys.readouterr().err
    (tmp_path / "root.json").write_text('{"signed": {"type": "keys"}, "signatures": []}')
    assert main([*argv, "--root", str(tmp_path / "root.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected a root document" in err
    assert main([*argv, "--root", str(tmp_path / "missing.json")]) == 2
    assert "cannot read --root" in capsys.readouterr().err
