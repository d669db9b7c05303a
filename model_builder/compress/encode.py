"""The deployable encoding: shared weights as index tensors in an ONNX graph that stock ONNX Runtime runs.

A shared convolution's float weight initializer is replaced by small tensors and a few standard ops
that rebuild it; every input of those ops is an initializer, so ONNX Runtime's constant folding
(on by default, at session creation) computes the float weight once and the running graph is the
plain float graph again: same kernels, same latency, a few tens of milliseconds more to load.

For a pruned layer ``W`` (``n`` weights, ``nnz`` kept), the initializers are

- ``W.mask``: ``np.packbits`` of the keep mask, uint8 ``(ceil(n/8),)``, most significant bit first;
- ``W.index``: the kept positions' codebook indices in order, uint8 ``(nnz,)``, values 1 … 2^bits−1;
- ``W.codebook``: ``(K,)`` with ``codebook[0] = 0``, float16 when every entry is exactly a float16
  (the pipeline rounds codebooks and biases to half precision), else float32; ``W.shape``: the
  weight's shape.

and the graph (opset 17 ops only; shared constants under ``decode.*``)::

    bits  = Mod(BitShift(Unsqueeze(W.mask, 1), [7 … 0]), 2)          (ceil(n/8), 8) uint8
    keep  = Cast(Slice(Reshape(bits, [-1]), 0, n), int64)             (n,) 0/1
    pos   = CumSum(keep) · keep                                        (n,) rank of each kept weight, 0 if pruned
    index = Gather(Concat([0], W.index), pos)                          (n,) uint8, 0 if pruned
    W     = Reshape(Gather(Cast(W.codebook, float), Cast(index, int64)), W.shape)

A dense layer is just ``Reshape(Gather(W.codebook, Cast(W.index)), W.shape)`` with the full index.
Any other float32 initializer (the biases) whose values are all exactly float16 travels as
``B.half`` and a ``Cast`` back to float32 named ``B``: the decoded graph holds the same numbers, in
half the bytes (floats are close to incompressible: 2,954 biases are 11.8 kB of the demo payload).

Why this split, not one full index tensor with 0 for pruned: zstd codes literals with Huffman codes
of at least one bit, so a full index pays ≥ 1 bit for each pruned position (67 % of them at 33 %
density) and a prefix bit on every kept index; the bitmap costs h(0.33) = 0.915 bits per weight
and the kept indices their own entropy. Tensor names are the PyTorch names plus a suffix, stable
across versions, so ``artifact``'s delta finds an unchanged mask or index tensor and sends nothing.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
from onnx import TensorProto, helper, numpy_helper

from model_builder.compress.share import LayerCode

METADATA_KEY = "compression"


def _constants() -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.arange(7, -1, -1, dtype=np.uint8).reshape(1, 8), "decode.shifts"),
        numpy_helper.from_array(np.array(2, dtype=np.uint8), "decode.two"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "decode.axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "decode.flat"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "decode.start"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "decode.axis0"),
        numpy_helper.from_array(np.array([0], dtype=np.uint8), "decode.zero"),
    ]


def as_half(values: np.ndarray) -> np.ndarray | None:
    """``values`` as float16 when that loses nothing (every value is exactly a float16), else None."""
    half = values.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), values.astype(np.float32)) else None


def _float_tensor(values: np.ndarray, name: str, out: str) -> tuple[onnx.TensorProto, list[onnx.NodeProto]]:
    """``values`` as the float32 value ``out``: stored as float16 plus a ``Cast`` when that is exact."""
    half = as_half(values)
    if half is None:
        return numpy_helper.from_array(values.astype(np.float32), name), []
    return numpy_helper.from_array(half, name), [helper.make_node("Cast", [name], [out], to=TensorProto.FLOAT)]


def _layer(name: str, code: LayerCode, ordinal: int) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initializers and nodes that rebuild the float weight ``name`` (see module doc)."""
    shape = np.array(code.index.shape, dtype=np.int64)
    index = code.index.numpy().astype(np.uint8).reshape(-1)

    def v(step: str) -> str:
        return f"decode/{ordinal}/{step}"  # short: these names travel in every payload

    codebook, cast = _float_tensor(code.codebook.numpy(), f"{name}.codebook", v("codebook"))
    table = cast[0].output[0] if cast else codebook.name
    tensors = [codebook, numpy_helper.from_array(shape, f"{name}.shape")]
    if not code.pruned:
        tensors.append(numpy_helper.from_array(index, f"{name}.index"))
        return tensors, [
            *cast,
            helper.make_node("Cast", [f"{name}.index"], [v("i64")], to=TensorProto.INT64),
            helper.make_node("Gather", [table, v("i64")], [v("flat")], axis=0),
            helper.make_node("Reshape", [v("flat"), f"{name}.shape"], [name]),
        ]
    keep = index != 0
    tensors += [
        numpy_helper.from_array(np.packbits(keep), f"{name}.mask"),
        numpy_helper.from_array(index[keep], f"{name}.index"),
        numpy_helper.from_array(np.array([index.size], dtype=np.int64), f"{name}.numel"),
    ]
    nodes = [
        *cast,
        helper.make_node("Unsqueeze", [f"{name}.mask", "decode.axis1"], [v("bytes")]),
        helper.make_node("BitShift", [v("bytes"), "decode.shifts"], [v("shifted")], direction="RIGHT"),
        helper.make_node("Mod", [v("shifted"), "decode.two"], [v("bits")]),
        helper.make_node("Reshape", [v("bits"), "decode.flat"], [v("padded")]),
        helper.make_node("Slice", [v("padded"), "decode.start", f"{name}.numel"], [v("keep8")]),
        helper.make_node("Cast", [v("keep8")], [v("keep")], to=TensorProto.INT64),
        helper.make_node("CumSum", [v("keep"), "decode.axis0"], [v("rank")]),
        helper.make_node("Mul", [v("rank"), v("keep")], [v("pos")]),
        helper.make_node("Concat", ["decode.zero", f"{name}.index"], [v("table")], axis=0),
        helper.make_node("Gather", [v("table"), v("pos")], [v("full")], axis=0),
        helper.make_node("Cast", [v("full")], [v("i64")], to=TensorProto.INT64),
        helper.make_node("Gather", [table, v("i64")], [v("flat")], axis=0),
        helper.make_node("Reshape", [v("flat"), f"{name}.shape"], [name]),
    ]
    return tensors, nodes


def encode_onnx(float_onnx: bytes, codes: dict[str, LayerCode], info: dict[str, object] | None = None) -> bytes:
    """Replace each coded float initializer of an exported model by its index encoding.

    ``info`` (method, bits, density) is written to the model's metadata for people reading the file.
    """
    model = onnx.load_model_from_string(float_onnx)
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    missing = sorted(set(codes) - set(by_name))
    if missing:
        raise ValueError(f"the exported graph has no initializer {missing[0]}")
    decode_nodes: list[onnx.NodeProto] = []
    new_tensors: list[onnx.TensorProto] = []
    for ordinal, (name, code) in enumerate(codes.items()):
        expected = numpy_helper.to_array(by_name[name])
        if expected.shape != tuple(code.index.shape):
            raise ValueError(f"{name}: graph shape {expected.shape} differs from the code's {tuple(code.index.shape)}")
        tensors, nodes = _layer(name, code, ordinal)
        graph.initializer.remove(by_name[name])
        new_tensors += tensors
        decode_nodes += nodes
    if any(code.pruned for code in codes.values()):
        new_tensors += _constants()
    for t in list(graph.initializer):  # the biases: half precision where that is exact
        if t.data_type == TensorProto.FLOAT and len(t.dims) == 1:
            half, cast = _float_tensor(numpy_helper.to_array(t), f"{t.name}.half", t.name)
            if cast:
                graph.initializer.remove(t)
                new_tensors.append(half)
                decode_nodes += cast
    # Group like with like: zstd builds one Huffman table per 128 KiB block, and a block that mixes
    # index bytes, mask bytes and floats codes them all worse. Indices first (right after the nodes,
    # which zstd mostly codes as matches), then the floats, then the masks: measured on the demo
    # model 254.7 KB against 274.6 KB interleaved per layer and 260.8 KB with the masks first.
    tensors = [*graph.initializer, *new_tensors]
    tensors.sort(key=lambda t: {".index": 0, ".mask": 2}.get(t.name[t.name.rfind(".") :], 1))
    del graph.initializer[:]
    graph.initializer.extend(tensors)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(decode_nodes + rest)  # producers first: the graph stays topologically sorted
    if info is not None:
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(info, sort_keys=True))
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def conv_weight_names(model: onnx.ModelProto) -> list[str]:
    return [node.input[1] for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")]


def decoded_weights(onnx_bytes: bytes) -> dict[str, np.ndarray]:
    """Every Conv weight as ONNX Runtime computes it from the file: what the device will run.

    Works for any graph: a float initializer is read as is; a weight produced by nodes (our index
    decoding, or a QDQ model's ``DequantizeLinear``) is computed by running exactly the subgraph that
    produces it in ONNX Runtime.
    """
    model = onnx.load_model_from_string(onnx_bytes)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    names = conv_weight_names(model)
    out = {n: numpy_helper.to_array(initializers[n]) for n in names if n in initializers}
    computed = [n for n in names if n not in initializers]
    if not computed:
        return out
    needed: set[int] = set()
    stack = list(computed)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node.input)
    nodes = [n for n in graph.node if id(n) in needed]
    used = {name for n in nodes for name in n.input}
    sub = helper.make_graph(
        nodes,
        "weights",
        [],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in computed],
        initializer=[t for t in graph.initializer if t.name in used],
    )
    sub_model = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    session = ort.InferenceSession(sub_model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(computed, {})
    out.update({n: np.asarray(v) for n, v in zip(computed, values, strict=True)})
    return {n: out[n] for n in names}


def index_streams(onnx_bytes: bytes) -> dict[str, dict[str, np.ndarray]]:
    """Per coded layer, the raw tensors that travel: ``mask`` (packed bits, if pruned) and ``index``."""
    model = onnx.load_model_from_string(onnx_bytes)
    tensors = {t.name: t for t in model.graph.initializer}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in conv_weight_names(model):
        if f"{name}.index" not in tensors:
            continue
        streams = {"index": numpy_helper.to_array(tensors[f"{name}.index"])}
        if f"{name}.mask" in tensors:
            streams["mask"] = numpy_helper.to_array(tensors[f"{name}.mask"])
        out[name] = streams
    return out
