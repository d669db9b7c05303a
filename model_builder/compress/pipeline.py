"""``compress``: a training run in, a compressed run out (Deep Compression, or int8 static quantization).

The output is a run directory like training's, so everything downstream works unchanged:

- ``best.pt``: the same checkpoint format, the state_dict holding the *decoded* float weights (exact
  zeros, shared values), metrics with ``density``, ``bits``, ``method``, ``accuracy_before`` (the
  parent's validation accuracy, re-measured on the same split) and ``val_accuracy`` after; and a
  ``compression`` entry with the masks / codebooks / indices, which ``--init-from`` reads back;
- ``model.onnx``: the deployable model (index encoding for k-means, QDQ for int8), which
  ``model-builder package`` ships for a compressed run;
- ``compression.json``: the report (accuracy per stage, sizes, entropy, per-layer statistics, timing);
- ``samples.npz``: the parent's validation samples, for golden sets.

k-means pipeline: per-layer magnitude pruning and masked fine-tuning → k-means weight sharing →
centroid fine-tuning → index-encoded ONNX, which must match the PyTorch model within 1e-4.
int8 pipeline: optional pruning as above → fp32 ONNX → static QDQ quantization on training images.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import artifact as A
from model_builder.allocator import keep_freed_memory
from model_builder.checkpoint import CHECKPOINT_FORMAT, Checkpoint, CheckpointMetrics, load_checkpoint, save_checkpoint
from model_builder.compress import prune, share
from model_builder.compress.config import DEFAULT_DENSITY, CompressConfig, CompressResult, schedule
from model_builder.compress.encode import encode_onnx
from model_builder.compress.finetune import calibration_images, evaluate_onnx
from model_builder.compress.outcome import check_loss, staged_output
from model_builder.compress.quantize import quantize_int8
from model_builder.compress.report import format_report, layer_stats, ort_timing, stream_report
from model_builder.compress.stages import Stage, prune_stage, share_stage
from model_builder.data import ImageSet, load_datasets, normalize
from model_builder.errors import CompressError, DataError, ExportError, TrainError
from model_builder.export import compare, export_model
from model_builder.fsutil import write_atomic
from model_builder.squeezenet import count_parameters
from model_builder.train import model_from_checkpoint

COMPRESSION_FORMAT = "model_builder.compression/1"


def _load_init(path: str, model: torch.nn.Module) -> tuple[dict[str, share.LayerCode], dict[str, Any]]:
    """The codes of a k-means compressed run, checked against this model's layers."""
    try:
        ckpt = load_checkpoint(path)
    except TrainError as e:
        raise CompressError(f"--init-from: {e}") from e
    comp = ckpt.get("compression")
    if not isinstance(comp, dict) or comp.get("method") != "kmeans":
        raise CompressError(f"--init-from {path} is not a k-means compressed run (compress it first)")
    layers = prune.conv_layers(model)
    codes = {name: share.LayerCode.from_state(state) for name, state in comp["layers"].items()}
    if set(codes) != set(layers):
        raise CompressError(f"--init-from {path} has other layers than this model (another architecture?)")
    for name, code in codes.items():
        if tuple(code.index.shape) != tuple(layers[name].weight.shape):
            raise CompressError(
                f"--init-from {path}: {name} has shape {list(code.index.shape)}, this model "
                f"{list(layers[name].weight.shape)}"
            )
    return codes, comp


def _datasets(cfg: CompressConfig, ckpt: Checkpoint) -> tuple[ImageSet, ImageSet]:
    """The parent's train/val split (same folder, fraction and seed), so accuracy before and after compare."""
    args = ckpt.get("train") or {}
    data = cfg.data or args.get("data")
    if not data:
        raise CompressError("the parent run does not name its training data; pass --data DIR")
    if not Path(data).is_dir():
        raise CompressError(
            f"training data {data} is not there; pass --data DIR (fine-tuning and evaluation need images)"
        )
    val = args.get("val") if cfg.data is None else None
    try:
        train_set, val_set = load_datasets(
            data, ckpt["preprocess"]["size"], val, float(args.get("val_fraction", 0.2)), int(args.get("seed", 0))
        )
    except DataError as e:
        raise CompressError(str(e)) from e
    if train_set.labels != list(ckpt["labels"]):
        raise CompressError(f"the data's classes {train_set.labels} differ from the model's {ckpt['labels']}")
    return train_set, val_set


def _export_bytes(model: torch.nn.Module, size: int, metadata: dict[str, str]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="compress-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_model(model, path, size, metadata=metadata)  # type: ignore[arg-type]
        return path.read_bytes()


def compress_run(cfg: CompressConfig, log: Callable[[str], None] = print) -> CompressResult:
    """Compress the run ``cfg.run`` into ``cfg.out`` (see module doc); raises :class:`CompressError`."""
    cfg.check()
    keep_freed_memory()
    started = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        with staged_output(Path(cfg.out)) as stage:
            return _compress(cfg, stage, log, started)
    finally:
        torch.set_num_threads(threads)


def _compress(
    cfg: CompressConfig, out: Path, log: Callable[[str], None], started: tuple[float, float]
) -> CompressResult:
    """Compress into ``out`` (the staging directory that becomes ``cfg.out`` once this returns)."""
    try:
        ckpt = load_checkpoint(cfg.run)
    except TrainError as e:
        raise CompressError(str(e)) from e
    parent_dir = Path(cfg.run) if Path(cfg.run).is_dir() else Path(cfg.run).parent
    model = model_from_checkpoint(ckpt)
    size = ckpt["preprocess"]["size"]
    init_codes: dict[str, share.LayerCode] | None = None
    bits, density = 8, DEFAULT_DENSITY[cfg.method]
    if cfg.init_from:
        init_codes, init_comp = _load_init(cfg.init_from, model)
        bits, density = int(init_comp["bits"]), float(init_comp["target_density"])
        if cfg.bits is not None and cfg.bits != bits:
            raise CompressError(f"--bits {cfg.bits} differs from the --init-from run's {bits} bits")
        if cfg.density is not None and abs(cfg.density - density) > 1e-9:
            raise CompressError(f"--density {cfg.density:g} differs from the --init-from run's {density:g}")
    elif cfg.method == "kmeans":
        bits = int(cfg.bits)  # type: ignore[arg-type]  # check() refused kmeans without bits
    if cfg.density is not None:
        density = cfg.density
    train_set, val_set = _datasets(cfg, ckpt)
    torch.manual_seed(cfg.seed)
    plan = schedule(cfg, len(train_set))
    st = Stage(train_set, val_set, torch.Generator().manual_seed(cfg.seed), cfg, plan, log)
    phases: dict[str, float] = {}
    acc: dict[str, float] = {}
    what = f"{bits} bits" if cfg.method == "kmeans" else "int8"
    log(
        f"{cfg.method} compression of {cfg.run}: {ckpt['model']['arch']}, {count_parameters(model):,} parameters, "
        f"density {density:.0%}, {what}; {len(train_set)} train / {len(val_set)} val images, "
        f"{torch.get_num_threads()} threads"
    )
    fp32_loss, acc["fp32"] = st.evaluate(model)
    log(f"fp32 parent: val accuracy {acc['fp32']:.2%} (at training: {float(ckpt['metrics']['val_accuracy']):.2%})")
    metadata = {
        "labels": json.dumps(list(ckpt["labels"])),
        "model_config": json.dumps(ckpt["model"], sort_keys=True),
        "preprocess": json.dumps(ckpt["preprocess"], sort_keys=True),
    }
    parent_onnx = _export_bytes(model, size, metadata)

    t0 = time.perf_counter()
    if init_codes is not None:
        pruned = next(iter(init_codes.values())).pruned
        masks = {name: code.mask for name, code in init_codes.items()} if pruned else None
        if masks is not None:
            prune.attach_masks(model, masks)
            prune.detach(model)
        log(f"masks and codebooks from {cfg.init_from}: no pruning rounds, indices kept where weights stayed put")
    else:
        masks = prune_stage(model, density, st, acc)
    phases["prune_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    codes: dict[str, share.LayerCode] | None = None
    if cfg.method == "kmeans":
        codes, val_loss = share_stage(model, masks, bits, init_codes, st, acc)
        onnx_bytes = encode_onnx(
            _export_bytes(model, size, metadata), codes, {"method": "kmeans", "bits": bits, "density": density}
        )
    else:
        log(f"int8 static quantization (QDQ, per channel), calibrating on {cfg.calibration_images} training images")
        calib = calibration_images(train_set, cfg.calibration_images, cfg.seed)
        onnx_bytes = quantize_int8(  # its QuantizeError is a CompressError
            _export_bytes(model, size, metadata), calib, activations=cfg.activations, progress=cfg.progress
        )
        val_loss, acc["final"], _ = evaluate_onnx(onnx_bytes, val_set, cfg.batch_size)
        log(f"int8 in ONNX Runtime: val accuracy {acc['final']:.2%}")
    phases["share_s" if cfg.method == "kmeans" else "quantize_s"] = time.perf_counter() - t0
    check_loss(cfg, acc["fp32"], acc["final"], bits, density, plan, masks is not None)

    t0 = time.perf_counter()
    write_atomic(out / "model.onnx", onnx_bytes)
    if cfg.method == "kmeans":
        inputs = normalize(val_set.images[:64]).numpy().astype(np.float32)
        try:
            diff, _agree = compare(out / "model.onnx", model, inputs)
        except ExportError as e:
            (out / "model.onnx").unlink(missing_ok=True)
            raise CompressError(f"the encoded model does not reproduce the compressed PyTorch model: {e}") from e
        log(f"encoded ONNX matches the compressed PyTorch model on {len(inputs)} val images: max |diff| {diff:.1e}")
    report = _report(cfg, bits, density, acc, parent_onnx, onnx_bytes, size)
    report["schedule"] = {
        "rule": plan.rule,
        "steps_per_epoch": plan.steps_per_epoch,
        "batch_size": cfg.batch_size,
        "train_images": len(train_set),
        "masked_steps": st.steps_run.get("masked fine-tune", 0),
        "codebook_steps": st.steps_run.get("centroid fine-tune", 0),
        "prune_rounds": cfg.prune_steps if "masked fine-tune" in st.steps_run else 0,
    }
    report["max_loss"] = cfg.max_loss
    phases["check_s"] = time.perf_counter() - t0
    report["phases"] = phases
    report["seconds"] = time.perf_counter() - started[0]
    report["cpu_seconds"] = time.process_time() - started[1]  # on a shared machine: what an idle one would take
    comp: dict[str, Any] = {
        "format": COMPRESSION_FORMAT,
        "method": cfg.method,
        "bits": bits,
        "target_density": density,
        "pruned": masks is not None,
    }
    if codes is not None:
        comp["rate_weight"] = cfg.rate_weight if init_codes is None else None  # None: the parent's assignment
        comp["layers"] = {name: code.to_state() for name, code in codes.items()}
    elif masks is not None:
        comp["masks"] = {name: m.clone() for name, m in masks.items()}
    metrics: CheckpointMetrics = {
        "val_accuracy": acc["final"],
        "val_loss": val_loss,
        "params": count_parameters(model),
        "density": report["achieved"]["density"],
        "bits": bits,
        "method": cfg.method,
    }
    metrics["method_kmeans" if cfg.method == "kmeans" else "method_int8"] = 1  # METHODS: kmeans, int8
    metrics["accuracy_before"] = acc["fp32"]
    metrics["parent_val_loss"] = fp32_loss
    metrics["payload_bytes"] = report["size"]["compressed"]["payload_bytes"]
    metrics["finetune_steps"] = sum(st.steps_run.values())
    new_ckpt: Checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": ckpt["model"],
        "labels": list(ckpt["labels"]),
        "preprocess": ckpt["preprocess"],
        "metrics": metrics,
        "train": ckpt.get("train", {}),
        "compress": asdict(cfg),
        "compression": comp,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    save_checkpoint(out / "best.pt", new_ckpt)
    if (parent_dir / "samples.npz").is_file():
        shutil.copyfile(parent_dir / "samples.npz", out / "samples.npz")
    write_atomic(out / "compression.json", (json.dumps(report, indent=2) + "\n").encode())
    return CompressResult(Path(cfg.out), report, format_report(report))


def _report(
    cfg: CompressConfig,
    bits: int,
    density: float,
    acc: dict[str, float],
    parent_onnx: bytes,
    onnx_bytes: bytes,
    size: int,
) -> dict[str, Any]:
    """compression.json: everything measured on the ONNX that will ship (see :mod:`.report`)."""
    stats = layer_stats(onnx_bytes)
    total, nonzero = sum(s.weights for s in stats), sum(s.nonzero for s in stats)
    max_distinct = max(s.distinct for s in stats)
    if cfg.method == "kmeans" and max_distinct > 2**bits:
        raise CompressError(f"internal: a decoded layer has {max_distinct} distinct values, more than 2^{bits}")
    return {
        "format": COMPRESSION_FORMAT,
        "parent": str(cfg.run),
        "out": str(cfg.out),
        "config": {**asdict(cfg), "bits": bits, "density": density},
        "accuracy": acc,
        "achieved": {"weights": total, "nonzero": nonzero, "density": nonzero / total, "max_distinct": max_distinct},
        "layers": [{"name": s.name, "weights": s.weights, "nonzero": s.nonzero, "distinct": s.distinct} for s in stats],
        "size": {
            key: {"onnx_bytes": len(b), "payload_bytes": len(A.encode_payload(b))}
            for key, b in (("fp32", parent_onnx), ("compressed", onnx_bytes))
        },
        "streams": stream_report(onnx_bytes),
        "timing": {"fp32": ort_timing(parent_onnx, size), "compressed": ort_timing(onnx_bytes, size)},
    }
