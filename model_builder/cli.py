"""`model-builder`: the command line of the model builder.

Every sub-command lives in its own module under `model_builder.commands` and registers itself
through a `register(subparsers)` function; this module only wires them together and turns the
package's own errors (one tree, :mod:`model_builder.errors`), artifact refusals and OS errors into one
clear line on stderr and exit status 2 (never a traceback). The commands let those errors rise to
here instead of re-wrapping them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Sub-command modules, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "model_builder.commands.describe",
    "model_builder.commands.dataset",
    "model_builder.commands.train",
    "model_builder.commands.compress",
    "model_builder.commands.export",
    "model_builder.commands.package",
    "model_builder.commands.pipeline",
    "model_builder.commands.explore",
    "model_builder.commands.sign",
    "model_builder.commands.trust",
    "model_builder.commands.publish",
    "model_builder.commands.delta",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-builder",
        description="Train, compress, sign and publish SqueezeNet models as OTA artifacts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from artifact import ArtifactError
    from model_builder.errors import BuilderError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BuilderError, ArtifactError, OSError) as e:
        print(f"model-builder: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("model-builder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
