"""Publish-time check that the decoded ONNX model is loadable and is the model the manifest describes.

The artifact door proves the bytes are the signed bytes; it does not look inside them. A registry
should still refuse an authentic artifact whose model cannot load, or whose input/output do not
match what the signed manifest tells devices to feed it — better a 422 at upload than a fleet of
devices failing their golden checks.
"""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

import artifact as A

from ..errors import InvalidArtifactError


def _shape_matches(declared: list[int | str], actual: list[int | str | None]) -> bool:
    """An int in the manifest must be that fixed size; a name means a symbolic (free) dimension."""
    if len(declared) != len(actual):
        return False
    for want, have in zip(declared, actual, strict=True):
        if isinstance(want, int) and want != have:
            return False
        if isinstance(want, str) and isinstance(have, int):
            return False
    return True


def _refuse(detail: str) -> InvalidArtifactError:
    return InvalidArtifactError(detail, reason="onnx")


def check_model(onnx_bytes: bytes, info: A.OnnxInfo) -> None:
    """Raise :class:`InvalidArtifactError` unless the model parses, passes the ONNX checker and matches `info`."""
    try:
        model = onnx.load_model_from_string(onnx_bytes)
        onnx.checker.check_model(model)
    except DecodeError as e:
        raise _refuse(f"the ONNX model is not a valid protobuf: {e}") from e
    except (onnx.checker.ValidationError, ValueError, TypeError) as e:
        raise _refuse(f"the ONNX model does not load: {(str(e).splitlines() or [''])[0][:300]}") from e

    io = A.read_graph_io(model)
    if io.opset != info.opset:
        raise _refuse(f"the model imports opset {io.opset}, the manifest says {info.opset}")

    inputs = {i.name: i for i in io.inputs}
    graph_input = inputs.get(info.input.name)
    if graph_input is None:
        raise _refuse(f"the model has no input {info.input.name!r} (inputs: {', '.join(inputs) or 'none'})")
    try:
        dtype = graph_input.dtype
    except (KeyError, ValueError) as e:
        raise _refuse(f"input {info.input.name!r} has an unsupported element type {graph_input.elem_type}") from e
    if dtype != info.input.dtype:
        raise _refuse(f"input {info.input.name!r} is {dtype}, the manifest says {info.input.dtype}")
    if not _shape_matches(info.input.shape, graph_input.shape):
        raise _refuse(f"input {info.input.name!r} has shape {graph_input.shape}, the manifest says {info.input.shape}")

    outputs = {o.name: o for o in io.outputs}
    graph_output = outputs.get(info.output.name)
    if graph_output is None:
        raise _refuse(f"the model has no output {info.output.name!r} (outputs: {', '.join(outputs) or 'none'})")
    if not _shape_matches(info.output.shape, graph_output.shape):
        raise _refuse(
            f"output {info.output.name!r} has shape {graph_output.shape}, the manifest says {info.output.shape}"
        )
