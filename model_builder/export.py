"""ONNX export that proves itself: the exported graph must reproduce PyTorch on real images.

The graph takes ``input`` float32 ``[batch, 3, H, W]`` (batch dynamic, H = W = the run's image size,
normalised as the checkpoint's ``preprocess`` says) and returns ``logits`` ``[batch, num_classes]``.

We use torch's TorchScript-based exporter (``dynamo=False``): it ships with torch and needs nothing
else, while the newer ``torch.export`` path needs the separate ``onnxscript`` package. For this
convolution-only network both give the same operators. Initializers keep the PyTorch parameter names
(``features.3.squeeze.weight`` …), which is what lets the model-aware deltas match tensors by name.

After writing the file, ONNX Runtime runs it on validation images (the ``samples.npz`` the run kept,
plus a folder when given) and the export fails unless every logit agrees with PyTorch within the
tolerance (1e-4 by default): an artifact that drifts from what was validated must never ship.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import torch

from model_builder.checkpoint import Checkpoint, load_checkpoint
from model_builder.data import load_image_folder, normalize
from model_builder.errors import ExportError
from model_builder.fsutil import write_atomic
from model_builder.squeezenet import SqueezeNet
from model_builder.train import model_from_checkpoint

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportReport:
    path: Path
    opset: int
    image_size: int
    num_classes: int
    images_checked: int
    max_abs_diff: float
    top1_agreement: float
    onnx_bytes: int


def export_model(
    model: SqueezeNet, path: str | Path, image_size: int, opset: int = OPSET, metadata: dict[str, str] | None = None
) -> None:
    """Write ``model`` (put in eval mode) as ONNX with a dynamic batch axis; atomic replace of ``path``."""
    if opset < 17:
        raise ExportError(f"opset {opset} is below the 17 this project targets")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = torch.zeros(1, 3, image_size, image_size)  # (1, 3, H, W)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose, see above
            torch.onnx.export(
                model,
                (dummy,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto, full_check=True)
        for key, value in sorted((metadata or {}).items()):
            proto.metadata_props.add(key=key, value=value)
        write_atomic(path, proto.SerializeToString(), mode=0o600)  # the mode exports have always had
    except (RuntimeError, onnx.checker.ValidationError) as e:
        raise ExportError(f"ONNX export failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_bytes(model: SqueezeNet, image_size: int, opset: int = OPSET) -> bytes:
    """:func:`export_model` into memory (benchmarks and tests that need ONNX bytes, not a file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_model(model, path, image_size, opset)
        return path.read_bytes()


def run_onnx(path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Logits from ONNX Runtime (CPU) for float32 NCHW ``inputs``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: inputs.astype(np.float32)})[0])


def compare(
    path: str | Path, model: SqueezeNet, inputs: np.ndarray, tolerance: float = TOLERANCE
) -> tuple[float, float]:
    """Max |ORT - PyTorch| over all logits and the top-1 agreement; raises past ``tolerance``.

    Runs the whole set as one batch and the first image alone, so the dynamic batch axis is checked.
    """
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(inputs)).numpy()  # (N, K)
    got = run_onnx(path, inputs)
    single = run_onnx(path, inputs[:1])
    if got.shape != expected.shape or single.shape != expected[:1].shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    diff = float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch: max |difference| {diff:.3g} > tolerance {tolerance:g} "
            f"over {len(inputs)} validation images"
        )
    return diff, float((got.argmax(1) == expected.argmax(1)).mean())


def validation_inputs(
    run_dir: Path | None, ckpt: Checkpoint, data: str | Path | None = None, limit: int = 64
) -> np.ndarray:
    """Normalised float32 NCHW validation images: the run's ``samples.npz``, then ``data`` if given."""
    pre = ckpt["preprocess"]
    parts: list[torch.Tensor] = []
    samples = run_dir / "samples.npz" if run_dir else None
    if samples and samples.is_file():
        with np.load(samples, allow_pickle=False) as z:
            parts.append(torch.from_numpy(z["images"]).permute(0, 3, 1, 2))  # (n, 3, S, S) uint8
    if data is not None:
        root = Path(data)
        folder = root / "val" if (root / "val").is_dir() else root
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files are simply not used for the check
            images = load_image_folder(folder, pre["size"], labels=list(ckpt["labels"])).images
        parts.append(images[:limit])
    if not parts:
        raise ExportError("no validation images to check the export on: the run has no samples.npz; pass --data DIR")
    images = torch.cat(parts)[:limit]
    return normalize(images, tuple(pre["mean"]), tuple(pre["std"])).numpy().astype(np.float32)


def export_run(
    run: str | Path, out: str | Path, data: str | Path | None = None, opset: int = OPSET, tolerance: float = TOLERANCE
) -> ExportReport:
    """Export a training run's best checkpoint to ``out`` and check it; ``out`` is removed on failure."""
    run = Path(run)
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt)
    size = ckpt["preprocess"]["size"]
    inputs = validation_inputs(run if run.is_dir() else run.parent, ckpt, data)
    metadata = {
        "labels": json.dumps(list(ckpt["labels"])),
        "preprocess": json.dumps(ckpt["preprocess"], sort_keys=True),
        "model_config": json.dumps(ckpt["model"], sort_keys=True),
    }
    out = Path(out)
    export_model(model, out, size, opset, metadata)
    try:
        diff, agreement = compare(out, model, inputs, tolerance)
    except ExportError:
        out.unlink(missing_ok=True)
        raise
    return ExportReport(
        out, opset, size, int(ckpt["model"]["num_classes"]), len(inputs), diff, agreement, out.stat().st_size
    )
