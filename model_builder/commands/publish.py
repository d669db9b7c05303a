"""`model-builder publish FILE --server URL --token TOKEN`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from model_builder.errors import CommandError
from model_builder.publish import publish


def _publish(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("OTA_ADMIN_TOKEN")
    if not token:
        raise CommandError("no token: pass --token or set OTA_ADMIN_TOKEN")
    if not args.file.is_file():
        raise CommandError(f"artifact {args.file} does not exist")
    result = publish(args.file, args.server, token, retries=args.retries, progress=not args.quiet)
    print(result.message)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="upload a signed artifact to the OTA server")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="admin token (default: $OTA_ADMIN_TOKEN)")
    p.add_argument("--retries", type=int, default=4, help="retries on connection errors and 5xx (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_publish)
