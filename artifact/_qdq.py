"""Which initializers are quantized, and by which scale and zero point (QDQ graphs).

In a QDQ model every quantized weight `q` feeds a `DequantizeLinear(q, scale, zero_point, axis)`.
When a fine-tune nudges the float weights, the per-channel scales move a little and *all* integer
values of a channel shift with them; predicting `round((q_old - zp_old) · s_old / s_new) + zp_new`
captures that shift, so the delta only pays for the genuine changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]


def _graph(model_bytes: bytes) -> onnx.GraphProto | None:
    """The model's graph, or None for bytes that are not a parseable model."""
    try:
        return onnx.load_model_from_string(model_bytes).graph
    except (DecodeError, ValueError, RuntimeError):
        return None


@dataclass(frozen=True)
class QuantRelation:
    scale: str
    zero_point: str | None
    axis: int


def quant_relations(model_bytes: bytes) -> dict[str, QuantRelation]:
    """Initializer name → how it is dequantized. Empty for anything that is not a parseable model."""
    graph = _graph(model_bytes)
    if graph is None:
        return {}
    initializers = {t.name for t in graph.initializer}
    relations: dict[str, QuantRelation] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        x, scale = node.input[0], node.input[1]
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if x not in initializers or scale not in initializers or (zp is not None and zp not in initializers):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        relations[x] = QuantRelation(scale, zp, axis)
    # A tensor that is itself a scale or zero point is never predicted (it must be decoded first).
    helpers = {r.scale for r in relations.values()} | {r.zero_point for r in relations.values() if r.zero_point}
    return {name: r for name, r in relations.items() if name not in helpers}


def scale_products(model_bytes: bytes) -> dict[str, tuple[str, str]]:
    """Bias scale → (input scale, weight scale) for quantized Conv/Gemm nodes.

    Quantizers set a bias's scale to `input_scale · weight_scale` (float32), so the delta can
    rebuild it from the two tensors instead of sending it.
    """
    graph = _graph(model_bytes)
    if graph is None:
        return {}
    initializers = {t.name for t in graph.initializer}
    dq_scale = {
        node.output[0]: node.input[1]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in initializers
    }
    products: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        x, w, b = (dq_scale.get(name) for name in node.input[:3])
        if x and w and b and b not in (x, w):
            products[b] = (x, w)
    return products
