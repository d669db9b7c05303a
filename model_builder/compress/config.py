"""The arguments of ``compress`` and what it returns (its errors: :class:`model_builder.errors.CompressError`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_builder.errors import CompressError

METHODS = ("kmeans", "int8")
DEFAULT_FINETUNE_EPOCHS = 4  # N: 3N epochs of masked fine-tuning, N of codebooks, unless the floor is more
MIN_FINETUNE_STEPS = 1000  # masked fine-tuning steps a small data set gets at least (codebooks: a third)
DEFAULT_DENSITY = {"kmeans": 0.33, "int8": 1.0}


@dataclass
class CompressConfig:
    """The arguments of one compression; stored in the checkpoint and the report."""

    run: str
    out: str
    method: str = "kmeans"
    density: float | None = None  # None: 0.33 for kmeans, 1.0 (no pruning) for int8, the parent's with init_from
    bits: int | None = None  # k-means: required (or the parent's with init_from); int8: 8
    finetune_steps: int | None = None  # S: masked fine-tuning S optimizer steps, codebooks S/3 (see schedule())
    finetune_epochs: int | None = None  # N, the older way to say it: 3N epochs masked, N epochs codebooks
    prune_steps: int = 1  # pruning rounds, all in the first third of the masked fine-tuning (see prune.py)
    max_loss: float = 1.0  # points of val accuracy the result may lose against the parent, else CompressError
    rate_weight: float = 0.2  # entropy-constrained k-means (see share.py); 0 = plain k-means
    lr: float = 1e-3  # masked fine-tuning (AdamW peak): measured 89.1 % after 12 epochs vs 71.6 % at 5e-4 for 6
    codebook_lr: float = 1e-4  # centroid fine-tuning
    batch_size: int = 64
    data: str | None = None  # None: the parent's training data
    init_from: str | None = None  # a compressed run whose masks and codebooks to start from
    calibration_images: int = 300
    activations: str = "uint8"  # measured 4x faster than int8 activations on x86 (see quantize.py)
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    def check(self) -> None:
        """Refuse nonsense before any work, each with a message that says what would be valid."""
        if self.method not in METHODS:
            raise CompressError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise CompressError(f"--density must lie in (0, 1] (the fraction of weights kept), got {self.density:g}")
        if self.bits is not None and not 2 <= self.bits <= 8:
            raise CompressError(f"--bits must lie between 2 and 8 (indices travel as uint8), got {self.bits}")
        if self.method == "kmeans" and self.bits is None and self.init_from is None:
            raise CompressError("--method kmeans needs --bits (e.g. --bits 6: 64 shared values per layer)")
        if self.method == "int8" and self.bits not in (None, 8):
            raise CompressError(f"--method int8 quantizes to 8 bits; --bits {self.bits} applies to kmeans only")
        if self.method == "int8" and self.init_from is not None:
            raise CompressError("--init-from continues a k-means compression; it does not apply to --method int8")
        for flag, value in (("--finetune-steps", self.finetune_steps), ("--finetune-epochs", self.finetune_epochs)):
            if value is not None and value < 0:
                raise CompressError(f"{flag} must be >= 0, got {value}")
        if self.finetune_epochs is not None and self.finetune_steps is not None:
            raise CompressError("give --finetune-steps or --finetune-epochs, not both (steps are the newer way)")
        if self.prune_steps < 1 or self.batch_size < 1 or self.calibration_images < 1:
            raise CompressError("prune steps, batch size and calibration images must be >= 1")
        if not 0.0 <= self.max_loss <= 100.0:  # NaN fails too
            raise CompressError(f"--max-loss must lie in [0, 100] (accuracy points), got {self.max_loss:g}")
        if not 0.0 <= self.rate_weight <= 10.0:
            raise CompressError(f"--rate-weight must lie in [0, 10] (0 = plain k-means), got {self.rate_weight:g}")
        if self.lr <= 0 or self.codebook_lr <= 0:
            raise CompressError("learning rates must be > 0")
        if Path(self.out).resolve() in (Path(self.run).resolve(), Path(self.run).resolve().parent):
            raise CompressError(f"--out {self.out} would overwrite the parent run; choose a new directory")


@dataclass(frozen=True)
class Schedule:
    """How long each fine-tuning stage trains, in optimizer steps (what the report states)."""

    masked_steps: int  # masked fine-tuning after pruning (pruning rounds in its first third)
    codebook_steps: int  # centroid fine-tuning after weight sharing
    steps_per_epoch: int  # batches in one pass over the training images
    rule: str  # how the numbers were chosen, for people


def schedule(cfg: CompressConfig, train_images: int) -> Schedule:
    """The fine-tuning schedule for ``train_images`` training images.

    By default the masked stage gets ``max(12 epochs, MIN_FINETUNE_STEPS)`` steps and the codebook
    stage a third of that: 12 epochs of the 5,000-image shapes set are ~950 steps, which recovers
    33 % / 6 bits within a point, but 12 epochs of 1,000 images are ~190, which left a real set 9.5
    points short (issue 14). A floor in steps gives a small set the updates it needs (as many epochs
    as it takes); a large one keeps its epochs. ``--finetune-steps`` sets the masked steps outright,
    ``--finetune-epochs N`` keeps its old meaning (3N and N epochs, no floor).
    """
    per_epoch = max(1, math.ceil(train_images / cfg.batch_size))
    if cfg.finetune_steps is not None:
        masked, rule = cfg.finetune_steps, f"--finetune-steps {cfg.finetune_steps}"
        return Schedule(masked, masked // 3 if masked else 0, per_epoch, rule)
    if cfg.finetune_epochs is not None:
        n = cfg.finetune_epochs
        return Schedule(3 * n * per_epoch, n * per_epoch, per_epoch, f"--finetune-epochs {n}")
    by_epochs = 3 * DEFAULT_FINETUNE_EPOCHS * per_epoch
    masked = max(by_epochs, MIN_FINETUNE_STEPS)
    rule = (
        f"{3 * DEFAULT_FINETUNE_EPOCHS} epochs of {per_epoch} steps"
        if masked == by_epochs
        else f"the {MIN_FINETUNE_STEPS}-step floor ({3 * DEFAULT_FINETUNE_EPOCHS} epochs would be {by_epochs} steps)"
    )
    return Schedule(masked, masked // 3, per_epoch, rule)


@dataclass
class CompressResult:
    out: Path
    report: dict[str, Any]
    summary: str
