"""Deep Compression: what ships is as sparse and as few-valued as claimed, runs in stock ONNX Runtime,
matches the compressed PyTorch model, keeps deltas small, and nonsense arguments are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import artifact as A
from model_builder.cli import main
from model_builder.compress import (
    CompressConfig,
    CompressResult,
    LayerCode,
    compress_run,
    conv_layers,
    decoded_weights,
    geometric_schedule,
    kmeans_1d,
    magnitude_masks,
    prune,
    share,
    share_weights,
)
from model_builder.compress.encode import encode_onnx
from model_builder.compress.share import round_to_half, share_layer
from model_builder.data import load_datasets, normalize
from model_builder.export import export_bytes
from model_builder.squeezenet import squeezenet1_1
from model_builder.train import TrainConfig, TrainResult, load_checkpoint, model_from_checkpoint, train

from .conftest import THREADS


def _compress(run: Path, out: Path, **kwargs: object) -> CompressResult:
    """Compress on the tiny sets: these tests check what ships, not accuracy, so no --max-loss stop."""
    kwargs = {"max_loss": 100.0, **kwargs}
    cfg = CompressConfig(run=str(run), out=str(out), threads=THREADS, progress=False, **kwargs)  # type: ignore[arg-type]
    return compress_run(cfg, log=lambda _line: None)


@pytest.fixture(scope="module")
def kmeans_run(trained_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> CompressResult:
    """The demo recipe on the tiny run: 33 % density, 6 bits, one epoch per fine-tuning stage."""
    out = tmp_path_factory.mktemp("compressed") / "v1"
    return _compress(trained_run.run_dir, out, density=0.33, bits=6, finetune_epochs=1)


def _val_inputs(tiny_shapes: Path, n: int = 32) -> np.ndarray:
    _train, val = load_datasets(tiny_shapes, 64)
    return normalize(val.images[:n]).numpy().astype(np.float32)


def test_decoded_onnx_has_the_density_and_bit_width_asked_for(kmeans_run: CompressResult) -> None:
    onnx_bytes = (kmeans_run.out / "model.onnx").read_bytes()
    weights = decoded_weights(onnx_bytes)  # run in ONNX Runtime from the index tensors, as the device does
    assert len(weights) == 26  # every convolution, the classifier included
    total = nonzero = 0
    for name, w in weights.items():
        assert np.unique(w).size <= 2**6, name
        assert abs(np.count_nonzero(w) / w.size - 0.33) <= 1.0 / w.size + 1e-9, name  # per layer, not global
        total, nonzero = total + w.size, nonzero + np.count_nonzero(w)
    assert nonzero / total == pytest.approx(0.33, abs=1e-3)
    initializers = {t.name: t for t in onnx.load_model_from_string(onnx_bytes).graph.initializer}
    assert not set(weights) & set(initializers)  # no float copy of any conv weight travels
    index = numpy_helper.to_array(initializers["classifier.1.weight.index"])
    assert index.dtype == np.uint8 and index.min() >= 1 and index.max() <= 63
    meta = load_checkpoint(kmeans_run.out)["metrics"]
    assert meta["bits"] == 6 and meta["method"] == "kmeans" and meta["density"] == pytest.approx(0.33, abs=1e-3)


def test_decoded_model_equals_the_compressed_pytorch_model(kmeans_run: CompressResult, tiny_shapes: Path) -> None:
    ckpt = load_checkpoint(kmeans_run.out)
    model = model_from_checkpoint(ckpt)
    onnx_bytes = (kmeans_run.out / "model.onnx").read_bytes()
    for name, w in decoded_weights(onnx_bytes).items():
        assert np.array_equal(ckpt["state_dict"][name].numpy(), w), name  # bit-identical weights
    x = _val_inputs(tiny_shapes)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_onnx_runtime_folds_the_decoding_at_load(kmeans_run: CompressResult, tmp_path: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    ort.InferenceSession(str(kmeans_run.out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "folded.onnx")).graph.node}
    assert "Conv" in ops and not ops & {"Gather", "CumSum", "BitShift", "Mod"}  # the running graph is the float one
    timing = kmeans_run.report["timing"]
    assert timing["compressed"]["latency_ms"] < 3 * timing["fp32"]["latency_ms"] + 1.0


def test_payload_approaches_the_entropy_of_indices_and_masks(kmeans_run: CompressResult) -> None:
    report = kmeans_run.report
    streams = report["streams"]
    assert streams["index_zstd_bytes"] <= 1.10 * streams["index_entropy_bytes"]
    assert streams["mask_zstd_bytes"] <= 1.10 * streams["mask_entropy_bytes"]
    sizes = report["size"]
    assert sizes["compressed"]["payload_bytes"] * 8 < sizes["fp32"]["payload_bytes"]
    assert json.loads((kmeans_run.out / "compression.json").read_text())["size"] == sizes


def test_masked_finetuning_recovers_what_one_shot_pruning_loses(trained_run: TrainResult, tmp_path: Path) -> None:
    result = _compress(
        trained_run.run_dir, tmp_path / "p", method="int8", density=0.6, finetune_epochs=1, calibration_images=32
    )
    acc = result.report["accuracy"]
    assert acc["pruned_no_finetune"] < acc["fp32"] - 0.05  # one cut, no retraining: accuracy drops
    assert acc["pruned"] > acc["pruned_no_finetune"] + 0.05  # gradual masked fine-tuning wins it back
    assert result.report["achieved"]["density"] == pytest.approx(0.6, abs=0.01)
    # An already pruned run is shared as it is: its zeros are kept and no pruning rounds run again.
    shared = _compress(result.out, tmp_path / "s", bits=4, density=0.6, finetune_epochs=1)
    assert "pruned" not in shared.report["accuracy"]
    assert shared.report["achieved"]["density"] == pytest.approx(result.report["achieved"]["density"], abs=1e-3)
    assert shared.report["achieved"]["max_distinct"] <= 16


def test_int8_path_gives_a_qdq_model_that_onnx_runtime_runs(
    trained_run: TrainResult, tmp_path: Path, tiny_shapes: Path
) -> None:
    result = _compress(trained_run.run_dir, tmp_path / "q", method="int8", calibration_images=64)
    model = onnx.load(str(result.out / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 26  # every conv weight is stored as int8
    session = ort.InferenceSession(str(result.out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": _val_inputs(tiny_shapes, 8)})[0]
    assert logits.shape == (8, 10) and np.isfinite(logits).all()
    acc = result.report["accuracy"]
    assert acc["final"] >= acc["fp32"] - 0.05
    metrics = load_checkpoint(result.out)["metrics"]
    assert metrics["method"] == "int8" and metrics["bits"] == 8
    assert metrics["density"] > 0.98  # no pruning (int8 rounding zeroes a few)


def test_delta_from_compressed_v1_to_compressed_finetuned_v2_is_small(
    kmeans_run: CompressResult, tiny_shapes: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    try:
        child = train(
            TrainConfig(
                data=str(tiny_shapes),
                out=str(tmp_path / "child"),
                init=str(kmeans_run.out),
                epochs=1,
                lr=1e-4,
                warmup_epochs=0.1,
                threads=THREADS,
                progress=False,
            ),
            log=lambda _line: None,
        )
    finally:
        torch.set_num_threads(threads)
    v2 = _compress(child.run_dir, tmp_path / "v2", init_from=str(kmeans_run.out), finetune_epochs=1)
    old, new = (kmeans_run.out / "model.onnx").read_bytes(), (v2.out / "model.onnx").read_bytes()
    assert old != new
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) < 0.25 * len(A.encode_payload(new))
    masks = {t.name: t.raw_data for t in onnx.load_model_from_string(old).graph.initializer if t.name.endswith(".mask")}
    new_masks = {
        t.name: t.raw_data for t in onnx.load_model_from_string(new).graph.initializer if t.name.endswith(".mask")
    }
    assert masks == new_masks  # the sparsity pattern is inherited, not recomputed


def test_package_ships_the_compressed_onnx_with_its_metrics(kmeans_run: CompressResult, tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    out = tmp_path / "v1.otam"
    argv = [
        "package",
        str(kmeans_run.out),
        "--name",
        "shapes",
        "--version",
        "1",
        "--key",
        str(tmp_path / "keys" / "signing.key"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    art = A.read_artifact(out.read_bytes())
    manifest = json.loads(art.manifest_bytes)
    onnx_bytes = (kmeans_run.out / "model.onnx").read_bytes()
    assert manifest["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()  # not a re-export of best.pt
    assert A.decode_payload(art.payload, encoding="onnx+zstd", max_length=len(onnx_bytes)) == onnx_bytes
    metrics = manifest["metrics"]
    assert metrics["bits"] == 6 and metrics["method_kmeans"] == 1
    assert metrics["density"] == pytest.approx(0.33, abs=1e-3) and "accuracy_before" in metrics


def _fails_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expect: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("model-builder: error:"), err
    assert expect in lines[0] and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--bits", "6", "--density", "0"], "--density must lie in (0, 1]"),
        (["--bits", "6", "--density", "1.5"], "--density must lie in (0, 1]"),
        (["--bits", "6", "--density", "-0.2"], "--density must lie in (0, 1]"),
        (["--bits", "1"], "--bits must lie between 2 and 8"),
        (["--bits", "9"], "--bits must lie between 2 and 8"),
        ([], "--method kmeans needs --bits"),
        (["--method", "int8", "--bits", "6"], "int8 quantizes to 8 bits"),
        (["--bits", "6", "--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
        (["--bits", "6", "--rate-weight", "-0.1"], "--rate-weight must lie in [0, 10]"),
        (["--bits", "6", "--rate-weight", "nan"], "--rate-weight must lie in [0, 10]"),
    ],
)
def test_nonsense_arguments_are_refused_in_one_line(
    trained_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expect: str
) -> None:
    _fails_in_one_line(capsys, ["compress", str(trained_run.run_dir), "--out", str(tmp_path / "c"), *extra], expect)
    assert not (tmp_path / "c").exists()  # refused before any work


def test_missing_run_and_overwriting_the_parent_are_refused(
    trained_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails_in_one_line(
        capsys, ["compress", str(tmp_path / "nope"), "--out", str(tmp_path / "c"), "--bits", "6"], "no checkpoint"
    )
    run = str(trained_run.run_dir)
    _fails_in_one_line(capsys, ["compress", run, "--out", run, "--bits", "6"], "would overwrite the parent")
    _fails_in_one_line(
        capsys, ["compress", run, "--out", str(tmp_path / "c"), "--init-from", run], "is not a k-means compressed run"
    )


def test_pruning_is_per_layer_so_small_scale_layers_survive() -> None:
    torch.manual_seed(0)
    model = squeezenet1_1(num_classes=10)
    with torch.no_grad():
        model.classifier[1].weight.mul_(1e-3)  # a layer whose weights are all below everyone else's
    masks = magnitude_masks(model, 0.33)
    for name, mask in masks.items():
        assert abs(mask.float().mean().item() - 0.33) <= 1.0 / mask.numel(), name
    assert geometric_schedule(1.0, 0.33, 3) == pytest.approx([0.6910, 0.4775, 0.33], abs=1e-4)
    assert geometric_schedule(0.33, 0.33, 3) == []


def test_weight_sharing_keeps_zero_exact_and_uses_linear_initialisation() -> None:
    torch.manual_seed(0)
    model = squeezenet1_1(num_classes=10)
    masks = magnitude_masks(model, 0.5)
    codes = share_weights(model, masks, bits=3)
    for name, conv in conv_layers(model).items():
        code = codes[name]
        assert code.codebook[0] == 0.0 and len(code.codebook) <= 8
        decoded = code.decode()
        assert torch.equal(decoded == 0, ~masks[name])  # pruned ⇔ index 0 ⇔ exactly zero
        kept = conv.weight.detach()[masks[name]]
        assert decoded[masks[name]].min() >= kept.min() and decoded[masks[name]].max() <= kept.max()
    values = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0])
    centroids, labels = kmeans_1d(values, torch.tensor([1.0, 0.0]))  # caller's order is kept
    assert centroids.tolist() == pytest.approx([0.95, 0.1]) and labels.tolist() == [1, 1, 1, 0, 0]


def _index_entropy_bits(codes: dict[str, LayerCode]) -> float:
    total = 0.0
    for code in codes.values():
        kept = code.index[code.index != 0].long()
        p = torch.bincount(kept).double()
        p = p[p > 0] / len(kept)
        total += float(-(p * torch.log2(p)).sum()) * len(kept)
    return total


def test_entropy_constrained_sharing_sends_fewer_bits_with_at_most_2_to_the_bits_values() -> None:
    torch.manual_seed(0)
    model = squeezenet1_1(num_classes=10)
    masks = magnitude_masks(model, 0.33)
    plain = share_weights(model, masks, bits=6, rate_weight=0.0)
    constrained = share_weights(model, masks, bits=6, rate_weight=0.3)
    assert _index_entropy_bits(constrained) < 0.95 * _index_entropy_bits(plain)  # 0.93 on these uniform weights
    error = {"plain": 0.0, "constrained": 0.0}
    for name, conv in conv_layers(model).items():
        for label, codes in (("plain", plain), ("constrained", constrained)):
            decoded = codes[name].decode()
            assert torch.equal(decoded == 0, ~masks[name]) and decoded.unique().numel() <= 2**6, name
            error[label] += float(((decoded - conv.weight.detach()) ** 2).sum())
    assert error["plain"] < error["constrained"] < 10 * error["plain"]  # bits traded for a bounded error
    # A child whose weights did not move is assigned exactly as its parent (nothing for a delta to send).
    for name, code in constrained.items():
        assert code.rate_penalty > 0
        again = share_layer(code.decode(), masks[name], 6, init=code)
        assert torch.equal(again.index, code.index) and torch.equal(again.codebook, code.codebook), name
        restored = LayerCode.from_state(code.to_state())
        assert restored.rate_penalty == code.rate_penalty


def test_codebooks_and_biases_travel_in_half_precision_and_decode_exactly() -> None:
    torch.manual_seed(0)
    model = squeezenet1_1(num_classes=10).eval()
    with torch.no_grad():
        for conv in conv_layers(model).values():
            conv.bias.uniform_(-0.1, 0.1)
    codes = share_weights(model, magnitude_masks(model, 0.33), bits=4)
    share.attach_codes(model, codes)
    round_to_half(model)
    codes = share.read_codes(model, codes)
    prune.detach(model)
    odd = "features.0.bias"
    with torch.no_grad():  # one bias that float16 cannot hold exactly stays float32
        conv_layers(model)["features.0.weight"].bias[0] = 0.1 + 1e-6
    encoded = onnx.load_model_from_string(encode_onnx(export_bytes(model, 64), codes))
    kinds = {t.name: t.data_type for t in encoded.graph.initializer}
    assert kinds["features.3.squeeze.bias.half"] == onnx.TensorProto.FLOAT16
    assert kinds["features.3.squeeze.weight.codebook"] == onnx.TensorProto.FLOAT16
    assert kinds[odd] == onnx.TensorProto.FLOAT and f"{odd}.half" not in kinds
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(encoded.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"input": x})[0] - expected).max() <= 1e-4
