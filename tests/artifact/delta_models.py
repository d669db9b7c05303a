"""Models the delta tests share: tiny ONNX graphs from named tensors, sparse int8 changes, a QDQ pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def build_model(tensors: list[tuple[str, np.ndarray, bool]], extra_nodes: int = 0) -> bytes:
    """An ONNX model with the given initializers (name, values, as raw_data?) and some nodes."""
    inits = []
    for name, values, raw in tensors:
        t = numpy_helper.from_array(values, name)
        if not raw and values.dtype == np.float32:  # the typed-field form: lives in the skeleton
            t = helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.reshape(-1).tolist())
        inits.append(t)
    nodes = [helper.make_node("Identity", ["x"], [f"y{i}"], name=f"n{i}") for i in range(extra_nodes + 1)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1]) for i in range(extra_nodes + 1)],
        initializer=inits,
    )
    return helper.make_model(graph).SerializeToString()


def qdq_models(tmp_path: Path) -> tuple[bytes, bytes]:
    """A small conv net, quantized to int8 QDQ by ONNX Runtime before and after a full fine-tune."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 3, 3, 3)) * 0.2).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((10, 64, 3, 3)) * 0.05).astype(np.float32)
    b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)

    def fp32_model(ws: list[np.ndarray]) -> bytes:
        names = ["w1", "b1", "w2", "b2"]
        graph = helper.make_graph(
            [
                helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["c1"], ["r1"]),
                helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
                helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
                helper.make_node("Flatten", ["p"], ["logits"]),
            ],
            "net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
            initializer=[numpy_helper.from_array(w, n) for w, n in zip(ws, names, strict=True)],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    calib = rng.standard_normal((32, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    def quantize(model: bytes, tag: str) -> bytes:
        (tmp_path / f"{tag}.onnx").write_bytes(model)
        quantize_static(
            str(tmp_path / f"{tag}.onnx"),
            str(tmp_path / f"{tag}.q.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        return (tmp_path / f"{tag}.q.onnx").read_bytes()

    base = [w1, b1, w2, b2]
    # The largest weight of every output channel grows by 3 %: each channel's scale moves with it,
    # so every quantized value of the channel is re-rounded, and the bias codes follow the scales.
    tuned = []
    for w in base:
        t = w.copy().reshape(w.shape[0], -1)
        peak = np.abs(t).argmax(axis=1)
        t[np.arange(t.shape[0]), peak] *= 1.03
        tuned.append(t.reshape(w.shape).astype(np.float32))
    return quantize(fp32_model(base), "v1"), quantize(fp32_model(tuned), "v2")


def changed(values: np.ndarray, where: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`values` with the flagged elements moved: ±1 codes for integers, a small nudge for floats."""
    out = values.reshape(-1).copy()
    if out.dtype.kind in "iu":
        info = np.iinfo(out.dtype)
        step = rng.choice([-1, 1], size=int(where.sum()))
        moved = out[where].astype(np.int64) + step
        moved = np.where((moved < info.min) | (moved > info.max), out[where].astype(np.int64) - step, moved)
        out[where] = moved.astype(out.dtype)
    else:
        out[where] = (out[where] * (1 + 1e-2 * rng.standard_normal(int(where.sum())))).astype(out.dtype)
        out[where] = np.where(out[where] == values.reshape(-1)[where], out[where] + 1, out[where])
    return out.reshape(values.shape)


def int8_codes(density: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    old = rng.integers(-100, 100, size).astype(np.int8)
    return old, changed(old, rng.random(size) < density, rng)


def int8_pair(density: float, size: int = 50_000) -> tuple[bytes, bytes]:
    old, new = int8_codes(density, size)
    return build_model([("w", old, True)]), build_model([("w", new, True)])


def squeezenet_like(seed: int) -> list[tuple[str, np.ndarray, bool]]:
    rng = np.random.default_rng(seed)
    return [
        (f"features.{i}.weight", (rng.standard_normal((64, 32, 3, 3)) * 0.05).astype(np.float32), True)
        for i in range(8)
    ]
