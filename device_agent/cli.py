"""`device-agent`: poll, fetch, verify, validate and hot-swap models on a device.

The agent is built in issue 5; until then this command only describes itself and refuses to run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device-agent", description="OTA device agent (not built yet).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("run", help="poll the server and serve the installed model (not built yet)")
    sub.add_parser("simulate", help="simulate a fleet of devices (not built yet)")
    args = parser.parse_args(argv)
    print(
        f"device-agent: error: '{args.command}' is not implemented yet (the agent lands with issue 5)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
