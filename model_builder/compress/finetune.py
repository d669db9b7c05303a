"""Fine-tuning stages (gradual pruning, codebooks) and ONNX Runtime evaluation.

A stage is a fresh AdamW with a brief linear warm-up and a cosine decay to zero over the stage: a
pruned or freshly shared network starts far from where its optimizer state was, so reusing the
training run's moments would push it with stale directions. ``on_step`` lets the pruner tighten the
masks between optimizer steps (see :class:`model_builder.compress.prune.GradualPruner`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]

from model_builder.data import ImageSet, batches
from model_builder.train import evaluate

Log = Callable[[str], None]
EVALUATIONS = 8  # validation passes per stage (at most one an epoch), plus one at the end


def finetune(
    model: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    generator: torch.Generator,
    desc: str,
    log: Log,
    progress: bool,
    keep_best: bool = False,
    on_step: Callable[[int], None] | None = None,
    evaluations: int = EVALUATIONS,
) -> tuple[float, float]:
    """Train every parameter that requires grad for ``steps`` optimizer steps; returns (val loss, val accuracy).

    Steps, not epochs: what recovers a pruned or shared network is the number of updates it gets, and
    an epoch of a 1,000-image set is a fifth of one of 5,000. The batches run through shuffled epochs
    of ``train_set`` until ``steps`` are done. Validation runs ``evaluations`` times, evenly spaced
    (never more often than once an epoch), and at the end. ``keep_best`` restores the evaluated state
    with the best validation accuracy (the state before this stage included), as training does for
    its checkpoint. ``on_step(k)`` runs before the first step (k = 0) and after every optimizer step k.
    """
    device = torch.device("cpu")
    if on_step is not None:
        on_step(0)  # with no steps at all, the pruner's cut still happens (and is what gets evaluated)
    loss, acc = evaluate(model, val_set, batch_size, device)
    if steps < 1:
        return loss, acc
    best = (acc, -loss, {k: v.detach().clone() for k, v in model.state_dict().items()}) if keep_best else None
    # channels_last: 1.4-1.8x faster masked/shared training on CPU (measured); torch's stubs lack memory_format
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(20, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    per_epoch = math.ceil(len(train_set) / batch_size)
    every = max(per_epoch, math.ceil(steps / max(1, evaluations)))
    step, loss_sum, seen = 0, 0.0, 0
    model.train()
    with tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, leave=False, disable=not progress) as bar:
        while step < steps:
            for x, y in batches(train_set, batch_size, generator, train=True):
                batch_loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()  # type: ignore[no-untyped-call]  # torch's stubs leave backward untyped
                optimizer.step()
                schedule.step()
                step += 1
                if on_step is not None:
                    on_step(step)
                loss_sum, seen = loss_sum + float(batch_loss.detach()) * len(y), seen + len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{float(batch_loss.detach()):.3f}", refresh=False)
                if step % every == 0 or step == steps:
                    loss, acc = evaluate(model, val_set, batch_size, device)
                    log(
                        f"  {desc} step {step}/{steps} (epoch {step / per_epoch:.1f}): train loss "
                        f"{loss_sum / seen:.4f}, val loss {loss:.4f}, val accuracy {acc:.2%}"
                    )
                    loss_sum, seen = 0.0, 0
                    if best is not None and (acc, -loss) > best[:2]:
                        best = (acc, -loss, {k: v.detach().clone() for k, v in model.state_dict().items()})
                    model.train()
                if step == steps:
                    break
    if best is not None and (best[0], best[1]) != (acc, -loss):
        model.load_state_dict(best[2])
        acc, loss = best[0], -best[1]
        log(f"  {desc}: kept the best evaluated state, val accuracy {acc:.2%}")
    return loss, acc


def session(onnx_bytes: bytes, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def evaluate_onnx(onnx_bytes: bytes, data: ImageSet, batch_size: int = 64) -> tuple[float, float, np.ndarray]:
    """(val loss, val accuracy, logits) of the model as ONNX Runtime runs it: what the device will see."""
    sess = session(onnx_bytes)
    name = sess.get_inputs()[0].name
    logits: list[np.ndarray] = []
    for x, _y in batches(data, batch_size):
        logits.append(np.asarray(sess.run(None, {name: x.numpy()})[0]))
    out = np.concatenate(logits)  # (N, K)
    loss = float(F.cross_entropy(torch.from_numpy(out), data.targets))
    acc = float((out.argmax(1) == data.targets.numpy()).mean())
    return loss, acc, out


def calibration_images(data: ImageSet, count: int, seed: int) -> np.ndarray:
    """``count`` training images drawn without replacement (seeded), normalised float32 NCHW."""
    from model_builder.data import normalize

    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data), generator=g)[: min(count, len(data))]
    return normalize(data.images[pick]).numpy().astype(np.float32)
