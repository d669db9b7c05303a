"""ONNX export: named, dynamic-batch graph that reproduces PyTorch on real validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model_builder.export import ExportError, compare, export_model, export_run, run_onnx, validation_inputs
from model_builder.squeezenet import squeezenet1_1
from model_builder.train import TrainResult, load_checkpoint, model_from_checkpoint


def test_export_matches_pytorch_on_validation_images(trained_run: TrainResult, colours: Path, tmp_path: Path) -> None:
    report = export_run(trained_run.run_dir, tmp_path / "model.onnx", data=colours)
    assert report.max_abs_diff <= 1e-4 and report.top1_agreement == 1.0
    assert report.images_checked == 64  # the run's 16 kept samples + the val folder, capped at 64
    proto = onnx.load(str(report.path))
    assert proto.opset_import[0].version >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]
    names = {t.name for t in proto.graph.initializer}
    assert {"features.3.squeeze.weight", "classifier.1.weight"} <= names  # deltas match tensors by these names
    logits = run_onnx(report.path, np.zeros((5, 3, 64, 64), np.float32))
    assert logits.shape == (5, 10)


def test_export_refuses_a_graph_that_disagrees(trained_run: TrainResult, tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained_run.run_dir)
    inputs = validation_inputs(trained_run.run_dir, ckpt)
    export_model(model_from_checkpoint(ckpt), tmp_path / "m.onnx", 64)
    other = model_from_checkpoint(ckpt)
    with torch.no_grad():
        other.classifier[1].bias.add_(1e-3)  # a drift far below what top-1 would notice
    with pytest.raises(ExportError, match="disagrees"):
        compare(tmp_path / "m.onnx", other, inputs)


def test_export_at_224_px_with_1000_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = squeezenet1_1().eval()
    export_model(model, tmp_path / "m.onnx", 224)
    inputs = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    diff, agreement = compare(tmp_path / "m.onnx", model, inputs)
    assert diff <= 1e-4 and agreement == 1.0
