"""Model builder: train, compress, export, package, sign and publish SqueezeNet models as OTA artifacts.

Public face: the command line (:func:`main`), the SqueezeNet family (:class:`SqueezeNet`,
:class:`SqueezeNetConfig`, :func:`squeezenet1_0`, :func:`squeezenet1_1`), the entry points of the
steps (:func:`make_shapes_dataset`, :func:`make_digits_dataset`, :func:`compress_run`,
:func:`quantize_int8`, :func:`export_run`, :func:`export_bytes`, :func:`build_artifact`) with their
configurations and results, the checkpoint reader and the error tree of :mod:`model_builder.errors`.
The commands live in :mod:`model_builder.commands`.

Three entry points share their module's name and are used from it, not from here:
``model_builder.train.train``, ``model_builder.explore.explore`` and
``model_builder.publish.publish``. A package attribute named like a submodule is replaced by that
submodule as soon as it is imported, so ``model_builder.train`` would mean the function or the
module depending on import order.

The names are imported on first use, so that ``import model_builder`` (or its error classes) does
not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint
    from .cli import main
    from .compress import CompressConfig, CompressResult, compress_run, quantize_int8
    from .data import make_shapes_dataset
    from .digits import make_digits_dataset
    from .errors import (
        AccuracyLossError,
        BuilderError,
        CommandError,
        CompressError,
        DataError,
        ExploreError,
        ExportError,
        PackageError,
        PublishError,
        QuantizeError,
        TrainError,
    )
    from .export import ExportReport, export_bytes, export_run
    from .package import build_artifact
    from .publish import PublishResult
    from .squeezenet import SqueezeNet, SqueezeNetConfig, count_parameters, squeezenet1_0, squeezenet1_1
    from .train import TrainConfig, TrainResult, model_from_checkpoint

_WHERE = {
    "main": ".cli",
    "AccuracyLossError": ".errors",
    "BuilderError": ".errors",
    "CommandError": ".errors",
    "CompressError": ".errors",
    "DataError": ".errors",
    "ExploreError": ".errors",
    "ExportError": ".errors",
    "PackageError": ".errors",
    "PublishError": ".errors",
    "QuantizeError": ".errors",
    "TrainError": ".errors",
    "SqueezeNet": ".squeezenet",
    "SqueezeNetConfig": ".squeezenet",
    "count_parameters": ".squeezenet",
    "squeezenet1_0": ".squeezenet",
    "squeezenet1_1": ".squeezenet",
    "make_shapes_dataset": ".data",
    "make_digits_dataset": ".digits",
    "TrainConfig": ".train",
    "TrainResult": ".train",
    "model_from_checkpoint": ".train",
    "Checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "CompressConfig": ".compress",
    "CompressResult": ".compress",
    "compress_run": ".compress",
    "quantize_int8": ".compress",
    "ExportReport": ".export",
    "export_bytes": ".export",
    "export_run": ".export",
    "build_artifact": ".package",
    "PublishResult": ".publish",
}
__all__ = [
    "AccuracyLossError",
    "BuilderError",
    "Checkpoint",
    "CommandError",
    "CompressConfig",
    "CompressError",
    "CompressResult",
    "DataError",
    "ExploreError",
    "ExportError",
    "ExportReport",
    "PackageError",
    "PublishError",
    "PublishResult",
    "QuantizeError",
    "SqueezeNet",
    "SqueezeNetConfig",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "build_artifact",
    "compress_run",
    "count_parameters",
    "export_bytes",
    "export_run",
    "load_checkpoint",
    "main",
    "make_digits_dataset",
    "make_shapes_dataset",
    "model_from_checkpoint",
    "quantize_int8",
    "squeezenet1_0",
    "squeezenet1_1",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
