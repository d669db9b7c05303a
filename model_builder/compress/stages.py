"""The two training stages of Deep Compression: pruning with masked fine-tuning, and weight sharing with centroid
fine-tuning."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model_builder.compress import prune, share
from model_builder.compress.config import CompressConfig, Schedule
from model_builder.compress.finetune import finetune
from model_builder.data import ImageSet
from model_builder.errors import CompressError
from model_builder.train import evaluate


@dataclass
class Stage:
    """What every fine-tuning stage shares: the data, the seeded generator, the batch size, the log."""

    train_set: ImageSet
    val_set: ImageSet
    generator: torch.Generator
    cfg: CompressConfig
    schedule: Schedule
    log: Callable[[str], None]
    steps_run: dict[str, int] = field(default_factory=dict)  # optimizer steps per stage, for the report

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        return evaluate(model, self.val_set, self.cfg.batch_size, torch.device("cpu"))

    def finetune(
        self,
        model: torch.nn.Module,
        steps: int,
        lr: float,
        weight_decay: float,
        desc: str,
        keep_best: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[float, float]:
        self.steps_run[desc] = self.steps_run.get(desc, 0) + steps
        return finetune(
            model, self.train_set, self.val_set, steps=steps, lr=lr, weight_decay=weight_decay,
            batch_size=self.cfg.batch_size, generator=self.generator, desc=desc, log=self.log,
            progress=self.cfg.progress, keep_best=keep_best, on_step=on_step,
        )  # fmt: skip


def prune_stage(
    model: torch.nn.Module, density: float, st: Stage, acc: dict[str, float]
) -> dict[str, torch.Tensor] | None:
    """Per-layer magnitude pruning within the schedule's masked fine-tuning steps; returns the masks."""
    if density >= 1.0:
        return None
    start = prune.model_density(model)
    previous = prune.current_masks(model) if start < 1.0 else None
    if start <= density + 1e-3:  # per-layer rounding leaves a pruned parent a hair above its target
        st.log(f"the parent is already at density {start:.1%}: keeping its zeros, no pruning")
        return previous
    oneshot = copy.deepcopy(model)
    prune.attach_masks(oneshot, prune.magnitude_masks(oneshot, density, previous))
    acc["pruned_no_finetune"] = st.evaluate(oneshot)[1]
    st.log(f"pruned to {density:.0%} at once, no fine-tuning: val accuracy {acc['pruned_no_finetune']:.2%}")
    steps = st.schedule.masked_steps
    pruner = prune.GradualPruner(model, density, st.cfg.prune_steps, steps, previous)
    st.log(
        f"pruning {start:.0%} -> {density:.0%} in {pruner.rounds} round(s) within the first third of {steps} steps "
        f"of masked fine-tuning ({steps / st.schedule.steps_per_epoch:.1f} epochs; {st.schedule.rule})"
    )
    acc["pruned"] = st.finetune(model, steps, st.cfg.lr, 1e-4, "masked fine-tune", on_step=pruner)[1]
    masks = pruner.masks()
    prune.detach(model)
    st.log(f"pruned to {prune.model_density(model):.1%}: val accuracy {acc['pruned']:.2%}")
    return masks


def share_stage(
    model: torch.nn.Module,
    masks: dict[str, torch.Tensor] | None,
    bits: int,
    init: dict[str, share.LayerCode] | None,
    st: Stage,
    acc: dict[str, float],
) -> tuple[dict[str, share.LayerCode], float]:
    """k-means sharing and centroid fine-tuning; leaves ``model`` holding exactly ``codebook[index]``."""
    codes = share.share_weights(model, masks, bits, init, st.cfg.rate_weight)
    share.attach_codes(model, codes)
    acc["shared_no_finetune"] = st.evaluate(model)[1]
    how = "entropy-constrained " if any(c.rate_penalty > 0 for c in codes.values()) else ""
    st.log(
        f"{how}k-means, {bits} bits per layer: val accuracy {acc['shared_no_finetune']:.2%} before centroid fine-tuning"
    )
    steps = st.schedule.codebook_steps
    st.log(f"centroid fine-tuning: {steps} steps ({steps / st.schedule.steps_per_epoch:.1f} epochs)")
    st.finetune(model, steps, st.cfg.codebook_lr, 0.0, "centroid fine-tune", keep_best=True)
    share.round_to_half(model)  # what travels; the accuracy that counts is measured after it
    val_loss, acc["final"] = st.evaluate(model)
    st.log(f"codebooks and biases rounded to float16 (as they travel): val accuracy {acc['final']:.2%}")
    codes = share.read_codes(model, codes)
    prune.detach(model)
    for name, conv in prune.conv_layers(model).items():
        if not torch.equal(conv.weight.detach(), codes[name].decode()):
            raise CompressError(f"internal: {name} does not equal codebook[index] after sharing")
    return codes, val_loss
