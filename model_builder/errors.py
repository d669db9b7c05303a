"""Every way the model builder refuses work, one class per cause under one base.

The command line (`model_builder.cli`) catches :class:`BuilderError` once and prints it as one line
on stderr with exit status 2; the commands let these rise instead of re-wrapping them. Library
callers catch :class:`BuilderError` or a specific class. Artifact problems (bad keys, bad manifests)
are `artifact.ArtifactError`s and keep that type.

::

    BuilderError
    ├── CommandError     command-line arguments or input files that make no sense
    │   └── RolloutSpecError   a --rollout, --gate or --selector value that cannot mean anything
    ├── DataError        image folder empty, one class, nothing decodable …
    ├── TrainError       run that cannot start, checkpoint that cannot be used
    ├── ExportError      ONNX export failed or disagrees with PyTorch
    ├── PackageError     run cannot become an artifact (golden set, model I/O)
    ├── PublishError     server refused the artifact or could not be reached
    ├── ExploreError     a design-space sweep that cannot run
    └── CompressError    compression cannot start or its result failed a check
        ├── QuantizeError    ONNX Runtime's quantizer refused the model
        └── AccuracyLossError   the result lost more accuracy than --max-loss allows (nothing written)
"""

from __future__ import annotations


class BuilderError(Exception):
    """Base of the builder's refusals; the message is meant for people."""


class CommandError(BuilderError):
    """Command-line arguments or input files that make no sense; the message names the option or file."""


class RolloutSpecError(CommandError):
    """A --rollout, --gate or --selector value that cannot mean anything; the message says why."""


class DataError(BuilderError):
    """The data set cannot be used as given."""


class TrainError(BuilderError):
    """A run that cannot start or a checkpoint that cannot be used."""


class ExportError(BuilderError):
    """The model could not be exported, or the exported graph disagrees with PyTorch."""


class PackageError(BuilderError):
    """The run cannot be packaged."""


class PublishError(BuilderError):
    """The server refused the artifact or could not be reached."""


class ExploreError(BuilderError):
    """A sweep that cannot run."""


class CompressError(BuilderError):
    """Compression cannot start or its result failed a check; the message says why (one line)."""


class QuantizeError(CompressError):
    """ONNX Runtime's quantizer refused the model."""


class AccuracyLossError(CompressError):
    """The compressed model fell more than ``--max-loss`` points below its parent; nothing was written."""
