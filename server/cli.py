"""`ota-server`: registry, rollouts and delivery of model versions.

The server is built in issue 4; until then this command only describes itself and refuses to run,
so that nothing pretends to serve.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ota-server", description="OTA model update server (not built yet).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="apply migrations and serve the API (not built yet)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    sub.add_parser("migrate", help="apply database migrations (not built yet)")
    sub.add_parser("create-token", help="mint an admin token (not built yet)")
    args = parser.parse_args(argv)
    print(
        f"ota-server: error: '{args.command}' is not implemented yet (the server lands with issue 4)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
