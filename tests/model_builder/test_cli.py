"""The command line: real runs end to end, and bad input answered in one line with no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_builder.cli import main


def _fails_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expect: str) -> None:
    assert main(argv) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("model-builder: error:"), err
    assert expect in lines[0]
    assert "Traceback" not in err


def test_describe_prints_table1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "--arch", "squeezenet1_0"]) == 0
    out = capsys.readouterr().out
    assert "fire9" in out and "13x13x512" in out and out.rstrip().endswith("1,248,424")


def test_describe_json_lists_every_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "--classes", "10", "--image-size", "96", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_params"] == 727_626
    assert len(info["parameters"]) == 52
    assert info["parameters"][-2] == {"name": "classifier.1.weight", "shape": [10, 512, 1, 1]}


def test_make_dataset_train_export_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run = tmp_path / "shapes", tmp_path / "run"
    argv = ["make-dataset", "shapes", "--out", str(data), "--per-class", "3", "--val-per-class", "2", "--size", "64"]
    assert main(argv) == 0
    assert len(list((data / "val").rglob("*.png"))) == 20
    train = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--no-progress", "--threads", "2"]
    assert main(train) == 0
    assert (run / "best.pt").is_file() and (run / "run.json").is_file()
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    _fails_in_one_line(capsys, argv, "not an empty folder")


def test_train_on_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_in_one_line(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")], "is empty")


def test_train_with_a_missing_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_shapes: Path) -> None:
    argv = ["train", "--data", str(tiny_shapes), "--out", str(tmp_path / "r"), "--init", str(tmp_path / "nope")]
    _fails_in_one_line(capsys, argv, "no such run directory")


def test_export_of_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_in_one_line(capsys, ["export", str(tmp_path / "none"), "--out", str(tmp_path / "m.onnx")], "no checkpoint")


def test_describe_with_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_in_one_line(capsys, ["describe", "--image-size", "32"], "at least 64")


def test_unknown_arch_is_an_argparse_error_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "x", "--out", "y", "--arch", "resnet50"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "Traceback" not in err
