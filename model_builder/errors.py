"""Every way the model builder refuses work, one class per cause under one base.

The commands turn these into one line on stderr and exit status 2 (`model_builder.cli`); library
callers catch :class:`BuilderError` or a specific class. Artifact problems (bad keys, bad manifests)
are `artifact.ArtifactError`s and keep that type.

::

    BuilderError
    ├── DataError        image folder empty, one class, nothing decodable …
    ├── TrainError       run that cannot start, checkpoint that cannot be used
    ├── ExportError      ONNX export failed or disagrees with PyTorch
    ├── PackageError     run cannot become an artifact (golden set, model I/O)
    ├── PublishError     server refused the artifact or could not be reached
    ├── ExploreError     a design-space sweep that cannot run
    └── CompressError    compression arguments or inputs that make no sense
"""

from __future__ import annotations


class BuilderError(Exception):
    """Base of the builder's refusals; the message is meant for people."""


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
    """Compression arguments or inputs that make no sense."""
