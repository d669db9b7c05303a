"""What makes a compression a result: the accuracy it may lose, and an output that appears only when good.

The parent's accuracy on its own validation split is the reference (re-measured here, on the same
images, so both numbers come from the same code). A result more than ``max_loss`` points below it is
refused with :class:`~model_builder.errors.AccuracyLossError`, whose one line names the knobs that
would help; the run is built in a hidden sibling directory and renamed to ``--out`` only once every
check passed, so a refused, failed or interrupted compression leaves nothing that ``package`` or
``export`` could mistake for a compressed run (and a previous good ``--out`` stays as it was).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model_builder.compress.config import CompressConfig, Schedule
from model_builder.errors import AccuracyLossError, CompressError


def check_loss(
    cfg: CompressConfig, parent: float, final: float, bits: int, density: float, schedule: Schedule, pruned: bool
) -> None:
    """Raise :class:`AccuracyLossError` when ``final`` is more than ``cfg.max_loss`` points below ``parent``."""
    loss = (parent - final) * 100.0
    if loss <= cfg.max_loss + 1e-9:
        return
    more_steps = max(2 * schedule.masked_steps, 1000)
    hints: list[str] = []
    if cfg.init_from:
        hints.append(f"more centroid fine-tuning (--finetune-steps {more_steps})")
        hints.append("compressing without --init-from (new masks and codebooks; a larger delta)")
    elif cfg.method == "kmeans":
        if pruned or bits < 8:
            hints.append(f"more fine-tuning (--finetune-steps {more_steps})")
        if density < 1.0:
            hints.append(f"a higher --density (e.g. {min(1.0, density + 0.17):.2f})")
        if bits < 8:
            hints.append(f"more --bits (e.g. {min(8, bits + 2)})")
    else:
        if density < 1.0:
            hints.append(f"more fine-tuning (--finetune-steps {more_steps}) or a higher --density")
        hints.append(f"more --calibration-images (e.g. {2 * cfg.calibration_images})")
        hints.append("--method kmeans --bits 8")
    raise AccuracyLossError(
        f"the compressed model scores {final:.2%} on the parent's validation split, {loss:.1f} points below the "
        f"fp32 parent's {parent:.2%} (--max-loss {cfg.max_loss:g}); nothing was written to {cfg.out}. "
        f"Try {', '.join(hints[:-1]) + ' or ' + hints[-1] if len(hints) > 1 else hints[0]}; "
        f"or accept the loss with --max-loss {max(cfg.max_loss, loss) + 0.5:.1f}"
    )


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A fresh hidden directory beside ``out`` to build the run in; it becomes ``out`` only if the block succeeds.

    On success an existing ``out`` is moved aside, the new run renamed into place, and the old one
    removed: at every moment ``out`` is the old complete run, nothing, or the new complete run. On
    any exception the staging directory is removed and ``out`` is left untouched.
    """
    if out.exists() and not out.is_dir():
        raise CompressError(f"--out {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would carry over to the run directory
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(stage, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
