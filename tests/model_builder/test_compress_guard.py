"""What compression promises beyond the encoding: a schedule counted in steps that scales with the data,
and a result that loses more than --max-loss points is refused without leaving anything that looks good."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from model_builder.cli import main
from model_builder.compress import CompressConfig
from model_builder.compress.config import MIN_FINETUNE_STEPS, schedule
from model_builder.train import TrainResult

from .test_compress import _fails_in_one_line


def _digests(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_the_default_schedule_gives_a_small_set_a_floor_of_steps_and_a_large_set_its_epochs() -> None:
    cfg = CompressConfig(run="r", out="o", bits=6)
    small, large = schedule(cfg, 1_006), schedule(cfg, 20_000)  # the real set; a set 20x larger
    assert small.steps_per_epoch == 16 and small.masked_steps == MIN_FINETUNE_STEPS  # not 12 epochs = 192 steps
    assert large.steps_per_epoch == 313 and large.masked_steps == 12 * 313  # 12 epochs, above the floor
    assert small.codebook_steps == MIN_FINETUNE_STEPS // 3 and large.codebook_steps == 4 * 313
    assert "floor" in small.rule and "12 epochs" in large.rule
    explicit = schedule(CompressConfig(run="r", out="o", bits=6, finetune_steps=450), 1_006)
    assert (explicit.masked_steps, explicit.codebook_steps) == (450, 150)
    old = schedule(CompressConfig(run="r", out="o", bits=6, finetune_epochs=2), 1_006)  # the older flag's meaning
    assert (old.masked_steps, old.codebook_steps) == (6 * 16, 2 * 16)


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--finetune-steps", "-5"], "--finetune-steps must be >= 0"),
        (["--finetune-steps", "10", "--finetune-epochs", "1"], "not both"),
        (["--max-loss", "-1"], "--max-loss must lie in [0, 100]"),
        (["--max-loss", "nan"], "--max-loss must lie in [0, 100]"),
    ],
)
def test_bad_schedule_and_loss_arguments_are_refused_before_any_work(
    trained_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expect: str
) -> None:
    argv = ["compress", str(trained_run.run_dir), "--out", str(tmp_path / "c"), "--bits", "6", *extra]
    _fails_in_one_line(capsys, argv, expect)
    assert list(tmp_path.iterdir()) == []


def test_a_compression_that_loses_too_much_stops_and_keeps_the_previous_result_intact(
    trained_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = str(trained_run.run_dir), tmp_path / "small"
    common = ["compress", run, "--out", str(out), "--threads", "1", "--no-progress"]
    # A first, gentle compression that is allowed to lose what it loses on this tiny set.
    assert main([*common, "--density", "0.9", "--bits", "4", "--finetune-steps", "3", "--max-loss", "100"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning: 3 masked steps" in printed and "1 codebook steps" in printed  # steps, not only epochs
    before = _digests(out)
    assert {"best.pt", "model.onnx", "compression.json"} <= set(before)
    # Then a harsh one (5 % of the weights, 2 bits, no fine-tuning) into the same directory, at the default --max-loss.
    assert main([*common, "--density", "0.05", "--bits", "2", "--finetune-steps", "0"]) == 2
    err = capsys.readouterr().err
    (message,) = [line for line in err.splitlines() if line.strip()]  # one line, no traceback
    assert message.startswith("model-builder: error: the compressed model scores") and "points below" in message
    for advice in ("--finetune-steps 1000", "higher --density", "more --bits", "--max-loss"):
        assert advice in message, advice
    assert _digests(out) == before  # the good result is still there, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # no half-written run beside it
