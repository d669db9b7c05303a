"""The arguments of ``compress`` and what it returns (its errors: :class:`model_builder.errors.CompressError`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_builder.errors import CompressError

METHODS = ("kmeans", "int8")
DEFAULT_DENSITY = {"kmeans": 0.33, "int8": 1.0}


@dataclass
class CompressConfig:
    """The arguments of one compression; stored in the checkpoint and the report."""

    run: str
    out: str
    method: str = "kmeans"
    density: float | None = None  # None: 0.33 for kmeans, 1.0 (no pruning) for int8, the parent's with init_from
    bits: int | None = None  # k-means: required (or the parent's with init_from); int8: 8
    finetune_epochs: int = 4  # N: masked fine-tuning 3N epochs (pruning rounds in the first N), codebooks N
    prune_steps: int = 1  # pruning rounds, all in the first third of the masked fine-tuning (see prune.py)
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
        if self.finetune_epochs < 0 or self.prune_steps < 1 or self.batch_size < 1 or self.calibration_images < 1:
            raise CompressError("--finetune-epochs must be >= 0; prune steps, batch size and calibration images >= 1")
        if not 0.0 <= self.rate_weight <= 10.0:
            raise CompressError(f"--rate-weight must lie in [0, 10] (0 = plain k-means), got {self.rate_weight:g}")
        if self.lr <= 0 or self.codebook_lr <= 0:
            raise CompressError("learning rates must be > 0")
        if Path(self.out).resolve() in (Path(self.run).resolve(), Path(self.run).resolve().parent):
            raise CompressError(f"--out {self.out} would overwrite the parent run; choose a new directory")


@dataclass
class CompressResult:
    out: Path
    report: dict[str, Any]
    summary: str
