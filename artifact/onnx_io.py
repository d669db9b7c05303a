"""What an ONNX model says about itself at its edges: opsets, graph inputs and outputs.

The packager writes these into the manifest's `onnx` block, and a registry compares them with that
block at upload; both read them here, so that the two always agree on what "the model's input" is.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

Dim = int | str | None


@dataclass(frozen=True)
class TensorIO:
    """A graph input or output: its name, its shape and its element type (TensorProto.DataType)."""

    name: str
    shape: list[Dim]  # a fixed size, a symbolic name, or None where the model leaves it unset
    elem_type: int

    @property
    def dtype(self) -> str:
        """The numpy name of the element type ("float32"); KeyError or ValueError for one numpy lacks."""
        return str(helper.tensor_dtype_to_np_dtype(self.elem_type).name)


@dataclass(frozen=True)
class GraphIO:
    """The imported opsets (domain → version, the default domain as "ai.onnx") and the graph's edges."""

    opsets: dict[str, int]
    inputs: list[TensorIO]  # graph inputs that are not initializers: what a caller feeds, in graph order
    outputs: list[TensorIO]

    @property
    def opset(self) -> int | None:
        """The version of the default (ai.onnx) operator set."""
        return self.opsets.get("ai.onnx")


def _tensor_io(value: onnx.ValueInfoProto) -> TensorIO:
    tensor = value.type.tensor_type
    shape: list[Dim] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return TensorIO(value.name, shape, tensor.elem_type)


def read_graph_io(model: onnx.ModelProto) -> GraphIO:
    """The opsets, inputs and outputs of a loaded model (no checks: see the callers for those)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    return GraphIO(
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        inputs=[_tensor_io(i) for i in graph.input if i.name not in initializers],
        outputs=[_tensor_io(o) for o in graph.output],
    )
