"""Benchmark: event retention stays bounded (issue 15: "no giant transaction", SQLite and PostgreSQL).

For SQLite and for PostgreSQL (127.0.0.1:5432, database `test`, a private schema dropped at the end):

1. Migrates an empty database, enrolls 1,000 devices and inserts OLD events received 40 days ago
   (four in five of them `metrics` windows) and 10 % as many recent ones, straight through SQL;
   OLD is 20,000, then 200,000 in a fresh database.
2. Runs event retention (`server.core.retention.EventRetention`, 30 days, its default batches) under
   the gc lease, while another thread records one device event every 20 ms through the server's
   own `Fleet.record_events` (what `POST /v1/device/events` does), as devices keep reporting.
3. Reports the batches' durations (each is one transaction), the deletion rate, and the latency of
   the concurrent event writes; checks that exactly the old events went and their metrics windows
   all landed in the summaries.

Goal: bounded work per transaction — the median batch transaction on a table ten times larger takes
at most 1.5× as long (both measured in one run); concurrent event writes never fail, and their p95
latency during retention exceeds the p95 measured just before (same writer, same run) by at most
the longest batch.

    .venv/bin/python -m bench.retention [--quick] [--no-write] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bench._report import write_section
from bench.poll import database, enroll_devices
from server.core.retention import EVENT_BATCH

GOAL_RATIO = 1.5
BASELINE_S = 5.0


@dataclass
class Event:
    type: str = "metrics"
    version: int | None = 1
    installed_version: int | None = None
    reason: str | None = None
    detail: str | None = None
    at: None = None
    metrics: dict[str, float] | None = None
    source: None = None
    bytes: None = None
    from_version: None = None
    state: None = None


def fill(url: str, old: int, recent: int) -> list[int]:
    from sqlalchemy import insert, select

    from server.db.models import Device, DeviceEvent
    from server.db.session import Database, utcnow

    db = Database(url)
    try:
        with db.session() as session:
            pks = list(session.scalars(select(Device.id).order_by(Device.id)))
        now = utcnow()
        for count, when in ((old, now - timedelta(days=40)), (recent, now)):
            for start in range(0, count, 10_000):
                rows = [
                    {
                        "device_pk": pks[i % len(pks)],
                        "type": "metrics" if i % 5 else "checking",
                        "version": 1,
                        "metrics": {"p50_ms": 3.0, "p95_ms": 6.0, "mean_confidence": 0.9, "requests": 60.0}
                        if i % 5
                        else None,
                        "received_at": when,
                    }
                    for i in range(start, min(start + 10_000, count))
                ]
                with db.session() as session:
                    session.execute(insert(DeviceEvent), rows)
                    session.commit()
        return pks
    finally:
        db.dispose()


def run_one(kind: str, old: int, recent: int) -> dict[str, object]:
    from server.core.fleet import Fleet
    from server.core.gc import Maintenance
    from server.core.retention import EventRetention
    from server.core.security import Signer
    from server.data import retention as retention_data
    from server.db.migrate import upgrade
    from server.db.session import Database
    from server.errors import DatabaseUnavailableError

    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        upgrade(url)
        enroll_devices(url, 1000)
        started = time.perf_counter()
        pks = fill(url, old, recent)
        print(f"{kind}: {old + recent:,} events inserted in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        db = Database(url)
        writer_db = Database(url)
        fleet = Fleet(writer_db, Signer("bench-secret-key-0123456789abcdef"))
        waits: list[float] = []
        failures: list[float] = []
        stop = threading.Event()

        def report() -> None:
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    fleet.record_events(device_pk=pks[i % len(pks)], events=[Event(metrics={"p50_ms": 3.0})])
                except DatabaseUnavailableError:  # what a device would get as a 503
                    failures.append(time.perf_counter() - t0)
                else:
                    waits.append(time.perf_counter() - t0)
                i += 1
                stop.wait(0.02)

        try:
            maintenance = Maintenance(db)
            retention = EventRetention(db, maintenance, days=30)
            writer = threading.Thread(target=report)
            writer.start()
            try:
                time.sleep(BASELINE_S)  # the same writes without retention, side by side
                before = len(waits)
                with maintenance.lease():
                    began = time.perf_counter()
                    result = retention.prune()
                    elapsed = time.perf_counter() - began
                during = len(waits)
            finally:
                stop.set()
                writer.join()
            with db.session() as session:
                remaining = retention_data.count_events(session)
                windows = sum(
                    s.windows for pk in pks[:1000] for s in retention_data.summaries_of(session, device_pk=pk)
                )
        finally:
            db.dispose()
            writer_db.dispose()
    return {
        "kind": kind,
        "deleted": result.deleted,
        "expected": old,
        "windows": windows,
        "expected_windows": sum(1 for i in range(old) if i % 5),
        "remaining": remaining,
        "expected_remaining": recent + len(waits),
        "rate": result.deleted / elapsed if elapsed else 0.0,
        "batches": result.batches,
        "batch_max": result.longest_batch,
        "batch_p50": result.median_batch,
        "old": old,
        "failed": len(failures),
        "before": p95(waits[:before]),
        "during": p95(waits[before:during]),
        "writes": during - before,
    }


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else max(values, default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 old events instead of 200,000 (and 2,000)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    large = 20_000 if args.quick else 200_000
    sizes = (large // 10, large)
    results = [run_one(kind, old, old // 10) for kind in args.databases.split(",") for old in sizes]
    lines = [
        f"A table of {sizes[0]:,} and one of {sizes[1]:,} events older than the retention period (plus 10 % "
        f"recent ones), 1,000 devices; batches of {EVENT_BATCH:,} (the default). One device event is recorded "
        f'every 20 ms through `Fleet.record_events` for {BASELINE_S:.0f} s before retention ("before") and '
        'while it runs ("during"); p95 of their latency.',
        "",
        "| database | old events | rate (events/s) | batches | batch p50 | batch max | writes during | failed | "
        "write p95 before | write p95 during | summaries |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ok = True
    ratios = []
    for r in results:
        exact = (
            r["deleted"] == r["expected"]
            and r["windows"] == r["expected_windows"]
            and r["remaining"] == r["expected_remaining"]
        )
        batch_max, before, during = float(r["batch_max"]), float(r["before"]), float(r["during"])  # type: ignore[arg-type]
        ok = ok and exact and r["failed"] == 0 and during <= before + batch_max
        lines.append(
            f"| {r['kind']} | {r['old']:,} | {r['rate']:,.0f} | {r['batches']} | "
            f"{1000 * float(r['batch_p50']):.0f} ms | {1000 * batch_max:.0f} ms | "  # type: ignore[arg-type]
            f"{r['writes']} | {r['failed']} | {1000 * before:.1f} ms | {1000 * during:.1f} ms | "
            f"{'exact' if exact else 'WRONG'} ({r['windows']:,} windows) |"
        )
    for small, big in zip(results[::2], results[1::2], strict=True):
        ratio = float(big["batch_p50"]) / max(float(small["batch_p50"]), 1e-9)  # type: ignore[arg-type]
        ratios.append(f"{small['kind']} {ratio:.2f}×")
        ok = ok and ratio <= GOAL_RATIO
    verdict = (
        f"verdict: {'PASS' if ok else 'FAIL'} — median batch transaction at {sizes[1]:,} ÷ at {sizes[0]:,} old "
        f"events: {', '.join(ratios)} (goal ≤ {GOAL_RATIO}×: the work per transaction does not grow with the "
        "table); concurrent event writes never fail and their p95 grows by at most one batch; exactly the old "
        "events deleted and every metrics window summarised"
    )
    lines += ["", verdict]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("retention", table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
