"""The model builder's public face: exactly these names, each resolving to one object, one error tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import model_builder
from model_builder.errors import BuilderError

PUBLIC = {
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
}


def _all_modules() -> list[str]:
    """Every module of the package but ``__main__`` (importing that runs the command line)."""
    names = [m.name for m in pkgutil.walk_packages(model_builder.__path__, "model_builder.")]
    return [name for name in names if not name.endswith(".__main__")]


def test_exported_names_are_exactly_the_public_face() -> None:
    assert set(model_builder.__all__) == PUBLIC
    assert len(model_builder.__all__) == len(PUBLIC)  # no name listed twice


def test_each_name_means_the_same_object_whatever_was_imported_before() -> None:
    first = {name: getattr(model_builder, name) for name in model_builder.__all__}
    for module in _all_modules():  # a submodule named like an export would replace it from here on
        importlib.import_module(module)
    for name, value in first.items():
        assert getattr(model_builder, name) is value, name
        assert not inspect.ismodule(value), name
    namespace: dict[str, object] = {}
    exec("from model_builder import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_every_exception_the_builder_defines_is_a_builder_error() -> None:
    """Library callers catch one base; the command line turns that base into one line."""
    defined = {
        obj
        for module in _all_modules()
        for obj in vars(importlib.import_module(module)).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__.startswith("model_builder")
    }
    errors = {cls for cls in defined if not issubclass(cls, Warning)}
    assert errors >= {model_builder.CompressError, model_builder.QuantizeError, model_builder.CommandError}
    assert {cls.__name__ for cls in errors if not issubclass(cls, BuilderError)} == set()
    assert {cls.__module__ for cls in errors} == {"model_builder.errors"}  # one module holds the tree
    assert issubclass(model_builder.QuantizeError, model_builder.CompressError)


def test_errors_are_usable_without_loading_torch() -> None:
    code = "import sys, model_builder; model_builder.BuilderError; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
