"""`model-builder publish FILE --server URL --token TOKEN [--rollout 5,25,100 --soak 600 --gate …]`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from artifact import parse_manifest, read_artifact
from model_builder.errors import CommandError, PublishError, RolloutSpecError
from model_builder.publish import publish
from model_builder.rollout import (
    DEFAULT_SOAK,
    GATE_FORM,
    RolloutPlan,
    create_rollout,
    parse_gate,
    parse_selector,
    parse_stages,
)

T = TypeVar("T")
ROLLOUT_ONLY = ("soak", "gate", "selector", "min_devices", "no_auto_advance")


def _spec(parse: Callable[[str], T]) -> Callable[[str], T]:
    """argparse's `type=`: a RolloutSpecError's own sentence becomes the usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except RolloutSpecError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def rollout_plan(args: argparse.Namespace) -> RolloutPlan | None:
    """The rollout the flags ask for, checked before anything is uploaded; None without --rollout."""
    if args.rollout is None:
        given = [f"--{name.replace('_', '-')}" for name in ROLLOUT_ONLY if getattr(args, name) not in (None, [], False)]
        if given:
            raise CommandError(
                f"{', '.join(given)} only mean something with --rollout PERCENTS (e.g. --rollout 5,25,100)"
            )
        return None
    if args.soak is not None and args.soak < 0:
        raise CommandError(f"--soak must be 0 or more seconds, got {args.soak}")
    if args.min_devices is not None and args.min_devices < 1:
        raise CommandError(f"--min-devices must be at least 1, got {args.min_devices}")
    metrics = [g["metric"] for g in args.gate]
    if len(set(metrics)) != len(metrics):
        raise CommandError("each --gate metric may be given once")
    keys = [k for k, _ in args.selector]
    if len(set(keys)) != len(keys):
        raise CommandError("each --selector label may be given once")
    return RolloutPlan(
        percents=args.rollout,
        soak_seconds=DEFAULT_SOAK if args.soak is None else args.soak,
        gates=tuple(args.gate),
        selector=dict(args.selector),
        min_devices=args.min_devices,
        auto_advance=not args.no_auto_advance,
    )


def start_rollout(file: Path, server: str, token: str, plan: RolloutPlan, retries: int) -> str:
    """Start the rollout of the artifact ``file`` just uploaded; returns the server's answer as a sentence."""
    manifest = parse_manifest(read_artifact(file.read_bytes()).manifest_bytes)
    try:
        rollout = create_rollout(server, token, manifest.model, manifest.version, plan, retries=retries)
    except PublishError as e:
        raise CommandError(f"uploaded v{manifest.version} of {manifest.model}; the rollout was refused: {e}") from e
    return rollout.message


def _publish(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("OTA_ADMIN_TOKEN")
    if not token:
        raise CommandError("no token: pass --token or set OTA_ADMIN_TOKEN")
    if not args.file.is_file():
        raise CommandError(f"artifact {args.file} does not exist")
    plan = rollout_plan(args)
    result = publish(args.file, args.server, token, retries=args.retries, progress=not args.quiet)
    print(result.message, flush=True)
    if plan is None:
        return 0
    print(start_rollout(args.file, args.server, token, plan, args.retries))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="upload a signed artifact to the OTA server (and start its rollout)",
        description="Upload a signed artifact. With --rollout, then start a staged rollout of it: a published "
        "version reaches devices only through a rollout.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="admin token (default: $OTA_ADMIN_TOKEN)")
    p.add_argument("--retries", type=int, default=4, help="retries on connection errors and 5xx (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_rollout_arguments(p)
    p.set_defaults(func=_publish)


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    """The rollout flags, shared by `publish` and `pipeline` (read back with :func:`rollout_plan`)."""
    r = p.add_argument_group("rollout (after the upload)")
    r.add_argument(
        "--rollout",
        type=_spec(parse_stages),
        metavar="P1,P2,…",
        help="start a rollout in stages of these percents of the devices, the last 100 "
        "(e.g. 5,25,100; 100 alone is an immediate rollout)",
    )
    r.add_argument(
        "--soak",
        type=int,
        metavar="SECONDS",
        help=f"how long each stage but the last runs before it may advance (default {DEFAULT_SOAK})",
    )
    r.add_argument(
        "--gate",
        type=_spec(parse_gate),
        action="append",
        default=[],
        metavar="EXPR",
        help=f"a health gate every stage must pass (repeat): {GATE_FORM}; metrics: latency_p95_ratio<=, "
        "confidence_delta>=, validation_failures<=",
    )
    r.add_argument(
        "--selector",
        type=_spec(parse_selector),
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="only devices with this label (repeat; all must match; default: every device of the model)",
    )
    r.add_argument("--min-devices", type=int, metavar="N", help="devices a stage must decide on before a verdict")
    r.add_argument(
        "--no-auto-advance", action="store_true", help="a stage that passes waits for an operator's `advance`"
    )
