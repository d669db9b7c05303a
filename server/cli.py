"""`ota-server`: migrate the database, serve the API, mint admin tokens, collect garbage, probe readiness.

Every command reads its configuration from the `OTA_*` environment (see :mod:`server.config`) and
works from any working directory. `serve` applies migrations before it listens, unless a separate
step (`ota-server migrate`, the deployment's one-shot job) did: `serve --no-migrate` then only
checks that the schema is current. `healthcheck` is the container's probe (the image has no curl).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import MAX_GC_SECONDS, MAX_RETENTION_DAYS, Settings, load_settings
from .errors import ConfigurationError, DatabaseUnavailableError, MaintenanceBusyError, StorageUnavailableError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .core.lifecycle import Plan


def _freeze_heap() -> None:
    """Move everything built so far (modules, the app) out of the garbage collector's full passes.

    It lives as long as the process, and walking it again on every full collection cost the update
    poll about a tenth of its time per request. Only for a serving process: tests build many apps.
    """
    gc.collect()
    gc.freeze()


def app_from_environment() -> FastAPI:
    """App factory for uvicorn worker processes (`--workers N`): settings from the environment."""
    from .app import create_app
    from .observability import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    _freeze_heap()
    return app


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .db.migrate import check_current, upgrade
    from .observability import configure_logging

    configure_logging(settings.log_level)
    if args.migrate:
        upgrade(settings.database_url)
    else:
        check_current(settings.database_url)
    common = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,  # the app writes its own structured access log
        "proxy_headers": True,
        "forwarded_allow_ips": args.forwarded_allow_ips,
        "timeout_graceful_shutdown": 10,
    }
    if args.workers > 1:
        uvicorn.run("server.cli:app_from_environment", factory=True, workers=args.workers, **common)
    else:
        app = create_app(settings)
        _freeze_heap()
        uvicorn.run(app, **common)
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from .db.migrate import current_revision, upgrade

    upgrade(settings.database_url)
    print(f"database at revision {current_revision(settings.database_url)}")
    return 0


def _create_token(settings: Settings, args: argparse.Namespace) -> int:
    from .core.auth import create_admin_token
    from .db.migrate import upgrade
    from .db.session import Database

    upgrade(settings.database_url)
    db = Database(settings.database_url, pool_size=1)
    try:
        token = create_admin_token(db, name=args.name)
    finally:
        db.dispose()
    if token is None:
        print(f"ota-server: error: an admin token named {args.name!r} already exists", file=sys.stderr)
        return 1
    print(token)
    print(f"admin token {args.name!r} created; it is shown only this once", file=sys.stderr)
    return 0


def _revoke_token(settings: Settings, args: argparse.Namespace) -> int:
    from .core.auth import revoke_admin_token
    from .db.session import Database

    db = Database(settings.database_url, pool_size=1)
    try:
        revoked = revoke_admin_token(db, name=args.name)
    finally:
        db.dispose()
    if not revoked:
        print(f"ota-server: error: no admin token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"admin token {args.name!r} revoked")
    return 0


def _list_tokens(settings: Settings, _args: argparse.Namespace) -> int:
    from .core.auth import list_admin_tokens
    from .db.session import Database

    db = Database(settings.database_url, pool_size=1)
    try:
        tokens = list_admin_tokens(db)
    finally:
        db.dispose()
    for t in tokens:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        print(f"{t.name}\tcreated {t.created_at:%Y-%m-%d %H:%M}\t{state}")
    return 0


def _plan_doc(plan: Plan) -> dict[str, Any]:
    versions = [
        {
            "model": v.facts.model,
            "version": v.facts.version,
            "action": "keep" if v.needed_by else ("collect" if v.due else "wait"),
            "why": v.why,
            **({} if v.needed_by or v.due else {"collectable_at": plan.due_at(v).isoformat()}),
        }
        for v in plan.versions
    ]
    deltas = [
        {
            "model_id": d.facts.model_id,
            "from_version": d.facts.from_version,
            "to_version": d.facts.to_version,
            "why": d.why,
        }
        for d in plan.deltas
    ]
    blobs = [{"sha256": b.sha256, "size": b.size, "why": b.why} for b in plan.blobs]
    return {
        "stored": {"blobs": plan.stored_blobs, "bytes": plan.stored_bytes},
        "versions": versions,
        "deltas": deltas,
        "blobs": blobs,
        "bytes": plan.blob_bytes,
    }


def _print_plan(plan: Plan, *, dry_run: bool) -> None:
    from .core.gc import size_text

    for v in plan.versions:
        name = f"{v.facts.model} v{v.facts.version}"
        if v.needed_by:
            print(f"keep     {name:<20} {v.why}")
        elif v.due:
            print(
                f"{'collect' if dry_run else 'collected':<8} {name:<20} {v.why}; no device runs it, nothing offers it"
            )
        else:
            print(f"wait     {name:<20} {v.why}; collectable after {plan.due_at(v):%Y-%m-%d %H:%M} UTC")
    for d in plan.deltas:
        print(
            f"{'collect' if dry_run else 'collected':<8} delta {d.facts.from_version}→{d.facts.to_version:<13} {d.why}"
        )
    for b in plan.blobs:
        print(f"{'delete' if dry_run else 'deleted':<8} blob {b.sha256[:16]}… {size_text(b.size):>9}  {b.why}")


def _gc_report(args: argparse.Namespace, plan: Plan, outcome: dict[str, Any], *summary: str) -> int:
    """Print what gc did or would do: with --json one document (the plan, then `outcome`), else the plan
    line by line and then the `summary` lines."""
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **_plan_doc(plan), **outcome}, indent=2))
    else:
        _print_plan(plan, dry_run=args.dry_run)
        for line in summary:
            print(line)
    return 0


def _gc(settings: Settings, args: argparse.Namespace) -> int:
    from .core.gc import Maintenance, StorageGC, size_text
    from .core.retention import EventRetention
    from .db.migrate import upgrade
    from .db.session import Database
    from .storage import open_storage

    def progress(line: str) -> None:
        print(f"gc: {line}", file=sys.stderr, flush=True)

    upgrade(settings.database_url)
    db = Database(settings.database_url, pool_size=1)
    storage = open_storage(settings)
    try:
        maintenance = Maintenance(db)
        collector = StorageGC(db, storage, maintenance, grace_seconds=args.grace, orphan_seconds=args.orphan_age)
        retention = EventRetention(db, maintenance, days=args.retention_days)
        if args.dry_run:
            plan = collector.plan()
            due = retention.count_due()
            return _gc_report(
                args,
                plan,
                {"events": {"older_than": retention.cutoff().isoformat(), "count": due}},
                f"would collect {len(plan.collect)} versions and {len(plan.deltas)} deltas, deleting "
                f"{len(plan.blobs)} of {plan.stored_blobs} blobs ({size_text(plan.blob_bytes)} of "
                f"{size_text(plan.stored_bytes)}); {len(plan.pending)} versions wait out the grace period",
                f"would delete {due} events older than {args.retention_days} days (their metrics kept as summaries)",
            )
        with maintenance.lease():
            swept = collector.sweep(progress)
            kept = retention.prune(progress=progress)
        plan = swept.plan
        done: dict[str, Any] = {
            "deleted_blobs": swept.deleted,
            "deleted_bytes": swept.deleted_bytes,
            "kept_blobs_named_since": swept.skipped,
            "events": {
                "older_than": kept.cutoff.isoformat(),
                "deleted": kept.deleted,
                "summarised": kept.summarised,
                "remaining": kept.remaining,
            },
        }
        return _gc_report(
            args,
            plan,
            done,
            f"collected {len(plan.collect)} versions and {len(plan.deltas)} deltas; deleted {swept.deleted} "
            f"blobs ({size_text(swept.deleted_bytes)}); {len(plan.pending)} versions wait out the grace period",
            f"deleted {kept.deleted} events older than {args.retention_days} days ({kept.summarised} metrics "
            f"windows kept as summaries); {kept.remaining} events remain",
        )
    except MaintenanceBusyError as e:
        print(f"ota-server: error: {e}", file=sys.stderr)
        return 4
    except StorageUnavailableError as e:
        print(f"ota-server: error: {e.detail}", file=sys.stderr)
        return 3
    finally:
        storage.close()
        db.dispose()


def _non_negative(text: str) -> int:
    """Seconds of a gc period: bounded, or `now - grace` overflows the date (a traceback, not an answer)."""
    value = int(text)
    if not 0 <= value <= MAX_GC_SECONDS:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_GC_SECONDS} (a century)")
    return value


def _positive(text: str) -> int:
    """Days of event retention, within the bounds of OTA_EVENT_RETENTION_DAYS."""
    value = int(text)
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_RETENTION_DAYS}")
    return value


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when `--url` answers 200 within `--timeout` seconds; else one line saying why, exit 1."""
    import json
    import urllib.error
    import urllib.request

    if not args.url.startswith(("http://", "https://")):
        print(f"ota-server: error: --url must be an http:// or https:// URL, got {args.url!r}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        try:
            detail = str(json.loads(e.read(4096)).get("detail", ""))
        except (ValueError, AttributeError, OSError):
            detail = ""
        print(f"ota-server: not ready: {args.url} answered {e.code} {detail}".rstrip(), file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"ota-server: not ready: {args.url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"ota-server: not ready: {args.url} answered {status}", file=sys.stderr)
        return 1
    print(f"{args.url}: ready")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line (the deployment tests parse docker-compose.yml's commands with it)."""
    parser = argparse.ArgumentParser(
        prog="ota-server", description="OTA model update server (configured by OTA_* variables)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="apply database migrations, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--forwarded-allow-ips", default="127.0.0.1", help="proxies trusted for X-Forwarded-* (default 127.0.0.1)"
    )
    serve.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="do not migrate; refuse to start unless the database is current (`migrate` ran as its own step)",
    )
    serve.set_defaults(run=_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)
    create = sub.add_parser("create-token", help="mint an admin token (printed once, stored hashed)")
    create.add_argument("--name", required=True, help="a name to tell tokens apart (unique)")
    create.set_defaults(run=_create_token)
    revoke = sub.add_parser("revoke-token", help="revoke an admin token by name")
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(run=_revoke_token)
    sub.add_parser("list-tokens", help="list admin tokens (names and dates; never the tokens)").set_defaults(
        run=_list_tokens
    )
    collect = sub.add_parser(
        "gc",
        help="delete the blobs of revoked or superseded versions nothing uses, and events past retention",
        description="Collect unused blobs (after a grace period) and delete old device events, keeping metric "
        "summaries. Run it with --dry-run first: it lists what would go and why, and writes nothing.",
    )
    collect.add_argument("--dry-run", action="store_true", help="list what would be collected; change nothing")
    collect.add_argument("--json", action="store_true", help="print the result as JSON")
    collect.add_argument(
        "--grace", type=_non_negative, default=None, metavar="SECONDS", help="default: OTA_GC_GRACE_SECONDS (86400)"
    )
    collect.add_argument(
        "--orphan-age",
        type=_non_negative,
        default=3600,
        metavar="SECONDS",
        help="delete a blob no version or delta names only once this old (default 3600)",
    )
    collect.add_argument(
        "--retention-days", type=_positive, default=None, metavar="DAYS", help="default: OTA_EVENT_RETENTION_DAYS (30)"
    )
    collect.set_defaults(run=_gc)
    health = sub.add_parser("healthcheck", help="exit 0 when the server answers /readyz with 200 (container probe)")
    health.add_argument("--url", default="http://127.0.0.1:8000/readyz", help="default http://127.0.0.1:8000/readyz")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    health.set_defaults(run=None, probe=_healthcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run is None:  # needs no settings: a probe must say "not ready", not "bad configuration"
        probe: int = args.probe(args)
        return probe
    try:
        settings = load_settings()
        if args.command == "gc":
            args.grace = settings.gc_grace_seconds if args.grace is None else args.grace
            args.retention_days = settings.event_retention_days if args.retention_days is None else args.retention_days
        result: int = args.run(settings, args)
        return result
    except ConfigurationError as e:
        print(f"ota-server: error: {e}", file=sys.stderr)
        return 2
    except DatabaseUnavailableError as e:
        print(f"ota-server: error: {e.detail}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
