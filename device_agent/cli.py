"""`device-agent`: run one device agent, or simulate a fleet.

    device-agent run --server URL --model NAME --model-dir DIR (--root ROOT.json | --trust KEY.pub [--trust KEY2.pub])
                     [--device-id ID] [--enroll-secret S | --token-file F] [--serve 127.0.0.1:PORT]
    device-agent simulate --server URL --model NAME --enroll-secret S --devices N (--root ROOT.json | --trust KEY.pub)
                     [--model-dir DIR] [--until-version V] [--timeout S]
                     [--inference-rate R [--metrics-interval S] [--inference-workers W]]

With `--root`, the device trusts a root key set and its publisher keys rotate through the keys
documents the root signs (docs/security.md); `--trust` alone pins publisher keys for good (legacy).
The enrollment secret may also come from OTA_ENROLLMENT_SECRET (a secret on a command line is
visible to every local user through `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import artifact as A

from .agent import Agent
from .config import CRASH_AT_ENV, AgentConfig, default_threads
from .errors import DirectoryLockedError, EnrollmentError
from .serve import InferenceServer, parse_address
from .simulate import FleetOptions, format_report, run_fleet

SECRET_ENV = "OTA_ENROLLMENT_SECRET"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="the OTA server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="the model name this device serves")
    p.add_argument(
        "--root", type=Path, metavar="ROOT.json", help="the root of trust (model-builder trust init): keys rotate"
    )
    p.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="KEY.pub",
        help="a trusted publisher key (repeat); with --root, used until the server serves a keys document",
    )
    p.add_argument("--threshold", type=int, default=1, help="distinct trusted signatures required (default 1)")
    p.add_argument("--enroll-secret", help=f"enrollment secret (default: ${SECRET_ENV})")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="device-agent", description="OTA device agent for ONNX image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="poll the server, install updates, serve the installed model")
    _common(run)
    run.add_argument("--model-dir", required=True, type=Path, help="where slots, state, token and events live")
    run.add_argument("--device-id", help="the id to enroll with (default: the server assigns one)")
    run.add_argument(
        "--token-file", type=Path, help="use this device token instead of enrolling (never renewed: it expires)"
    )
    run.add_argument("--label", action="append", type=_label, default=[], metavar="K=V", help="enrollment label")
    run.add_argument("--serve", metavar="HOST:PORT", help="serve POST /predict and GET /status here")
    run.add_argument("--poll-interval", type=_positive, help="seconds between polls (default: the server's, else 300)")
    run.add_argument("--metrics-interval", type=_positive, default=60.0, help="seconds between metrics events")
    run.add_argument("--threads", type=int, default=default_threads(), help="ONNX Runtime intra-op threads")
    run.add_argument(
        "--update-niceness", type=int, default=0, help="run update work this much nicer than /predict (default 0)"
    )

    sim = sub.add_parser("simulate", help="simulate a fleet of devices in one process")
    _common(sim)
    sim.add_argument("--devices", type=int, required=True, help="number of simulated devices")
    sim.add_argument("--model-dir", type=Path, help="keep each device's storage here (default: a temporary dir)")
    sim.add_argument("--until-version", type=int, help="exit once every device serves this version")
    sim.add_argument("--timeout", type=_positive, help="give up after this many seconds")
    sim.add_argument("--poll-interval", type=_positive, default=5.0, help="seconds between each device's polls")
    sim.add_argument("--concurrency", type=int, default=64, help="HTTP connections shared by the fleet")
    sim.add_argument("--id-prefix", help="device ids are PREFIX-0001 … (default: sim, or sim-<random> when temporary)")
    sim.add_argument(
        "--inference-rate",
        type=_non_negative,
        default=0.0,
        metavar="R",
        help="real inferences per second per device on the model it holds, reported as `metrics` events "
        "(default 0: none). The fleet's total, R × devices, is capped by what the inference workers can run: "
        "beyond it tokens are dropped and counted, never queued",
    )
    sim.add_argument(
        "--metrics-interval",
        type=_positive,
        default=10.0,
        metavar="S",
        help="seconds between each device's metrics events (default 10)",
    )
    sim.add_argument(
        "--inference-workers",
        type=int,
        metavar="W",
        help="inferences run at once for the whole fleet (default: CPU cores - 1, at least 1)",
    )
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _trust(paths: list[Path], threshold: int) -> A.TrustPolicy | None:
    if not paths:
        return None
    return A.TrustPolicy.of([A.load_public_key(p) for p in paths], threshold=threshold)


def _root(path: Path | None) -> A.TrustState | None:
    """The root of trust from `--root`; ValueError with a one-line reason."""
    if path is None:
        return None
    try:
        return A.TrustState.from_root(path.read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read --root {path}: {e.strerror}") from e
    except A.TrustError as e:
        raise ValueError(f"--root {path}: {e}") from e


def _fail(message: object) -> int:
    print(f"device-agent: error: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace, secret: str | None) -> int:
    if args.token_file is None and secret is None and not (args.model_dir / "credentials.json").exists():
        return _fail(f"pass --enroll-secret (or ${SECRET_ENV}) or --token-file")
    try:
        config = _run_config(args, secret)
        address = parse_address(args.serve) if args.serve else None
    except (A.KeyFileError, ValueError) as e:
        return _fail(e)
    agent = Agent(config)
    try:
        server = InferenceServer(agent, *address).start() if address else None
    except OSError as e:
        return _fail(f"cannot serve on {args.serve}: {e}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    try:
        asyncio.run(main())
    except (EnrollmentError, DirectoryLockedError) as e:
        return _fail(e)
    finally:
        if server is not None:
            server.close()
    return 0


def _run_config(args: argparse.Namespace, secret: str | None) -> AgentConfig:
    return AgentConfig(
        server=args.server,
        model=args.model,
        model_dir=args.model_dir,
        trust=_trust(args.trust, args.threshold),
        root=_root(args.root),
        device_id=args.device_id,
        enroll_secret=secret,
        token_file=args.token_file,
        labels=dict(args.label),
        poll_interval=args.poll_interval or 300.0,
        force_poll_interval=args.poll_interval is not None,
        metrics_interval=args.metrics_interval,
        threads=args.threads,
        update_niceness=args.update_niceness,
        crash_at=os.environ.get(CRASH_AT_ENV) or None,
    )


def _simulate(args: argparse.Namespace, secret: str | None) -> int:
    if secret is None:
        return _fail(f"simulate needs --enroll-secret (or ${SECRET_ENV})")
    if args.devices < 1 or args.concurrency < 1:
        return _fail("--devices and --concurrency must be at least 1")
    if args.inference_workers is not None and args.inference_workers < 1:
        return _fail("--inference-workers must be at least 1")
    try:
        trust = _trust(args.trust, args.threshold)
        root = _root(args.root)
    except (A.KeyFileError, ValueError) as e:
        return _fail(e)
    if trust is None and root is None:
        return _fail("a fleet needs a root of trust (--root) or trusted publisher keys (--trust)")
    options = FleetOptions(
        server=args.server,
        model=args.model,
        enroll_secret=secret,
        devices=args.devices,
        trust=trust,
        root=root,
        model_dir=args.model_dir,
        until_version=args.until_version,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        concurrency=args.concurrency,
        id_prefix=args.id_prefix,
        inference_rate=args.inference_rate,
        metrics_interval=args.metrics_interval,
        inference_workers=args.inference_workers,
    )
    try:
        report = asyncio.run(run_fleet(options))
    except (EnrollmentError, DirectoryLockedError) as e:
        return _fail(e)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report.to_json(), indent=1) if args.json else format_report(report))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.log_level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns what matters
    if args.command == "simulate" and args.log_level == "INFO":
        logging.getLogger("device_agent").setLevel(logging.WARNING)  # a thousand devices: the progress line says it
    secret = args.enroll_secret or os.environ.get(SECRET_ENV) or None
    return _run(args, secret) if args.command == "run" else _simulate(args, secret)


if __name__ == "__main__":
    sys.exit(main())
