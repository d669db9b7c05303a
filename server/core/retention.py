"""Event retention: device events older than ``OTA_EVENT_RETENTION_DAYS`` are deleted in bounded batches.

Nothing reads old events but a device's detail page (its latest 20) — the rollout gates read
``rollout_metrics``, the fleet views read the device rows — so what retention must keep is the
metrics the events carried: each batch folds its ``metrics`` events into
``device_metric_summaries`` (per device and version: windows, requests, request-weighted p50, p95
and confidence, first and last time) *in the same transaction* that deletes them, so a crash
neither loses nor double-counts a window.

On SQLite, whose one write lock every device's event report needs too, each batch is followed by
a pause as long as the batch (:meth:`Maintenance.pace`), so reports wait at most one batch.

Batches walk the primary key from the oldest event (no index on time, no scan): each takes the
lowest ``batch`` ids and deletes the leading run older than the cutoff; the first event inside the
retention period ends the run. Ids grow with arrival, so that run is exactly the old events, give
or take events that several processes inserted within the same instant.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..data import retention as data
from ..data.retention import SummaryAdd
from ..db.session import Database, utcnow
from .gc import Maintenance

EVENT_BATCH = 500
_METRIC_KEYS = ("p50_ms", "p95_ms", "mean_confidence")


@dataclass(frozen=True)
class RetentionResult:
    cutoff: datetime
    deleted: int
    summarised: int  # metrics events folded into summaries
    remaining: int  # events left in the table
    batches: int = 0
    longest_batch: float = 0.0  # seconds: the longest transaction
    median_batch: float = 0.0  # seconds


class EventRetention:
    def __init__(self, db: Database, maintenance: Maintenance, *, days: int, batch: int = EVENT_BATCH) -> None:
        self.db = db
        self.maintenance = maintenance
        self.period = timedelta(days=days)
        self.batch = batch

    def cutoff(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()) - self.period

    def count_due(self, now: datetime | None = None) -> int:
        """How many events a run would delete (the dry run; a count, nothing written)."""
        with self.db.session() as session:
            return data.count_events_before(session, cutoff=self.cutoff(now))

    def prune(self, now: datetime | None = None, progress: Callable[[str], None] = lambda _: None) -> RetentionResult:
        """Delete events older than the retention period (the caller holds the lease)."""
        cutoff = self.cutoff(now)
        deleted = summarised = 0
        durations: list[float] = []
        while True:
            began = time.monotonic()
            with self.db.session() as session:
                self.maintenance.renew(session)
                batch = data.oldest_events(session, limit=self.batch)
                old = []
                for event in batch:
                    if event.received_at >= cutoff:
                        break
                    old.append(event)
                adds: dict[tuple[int, int], SummaryAdd] = {}
                for event in old:
                    if fold(adds, event):
                        summarised += 1
                data.add_summaries(session, adds=adds)
                deleted += data.delete_events(session, ids=[e.id for e in old])
                session.commit()
            durations.append(time.monotonic() - began)
            if old:
                progress(f"deleted {deleted} events older than {cutoff:%Y-%m-%d %H:%M} UTC")
            if len(old) < len(batch) or len(batch) < self.batch:
                break
            self.maintenance.pace(began)
        with self.db.session() as session:
            remaining = data.count_events(session)
        return RetentionResult(
            cutoff, deleted, summarised, remaining, len(durations), max(durations), statistics.median(durations)
        )


def fold(adds: dict[tuple[int, int], SummaryAdd], event: data.OldEvent) -> bool:
    """Add one event to its (device, version) sums; False if it carries no usable metrics."""
    m = event.metrics or {}
    if (
        event.type != "metrics"
        or event.version is None
        or not all(isinstance(m.get(k), int | float) for k in _METRIC_KEYS)
    ):
        return False
    requests = m.get("requests", 0)
    requests = int(requests) if isinstance(requests, int | float) and requests > 0 else 0
    add = adds.setdefault((event.device_pk, event.version), SummaryAdd())
    add.windows += 1
    add.requests += requests
    add.p50_sum += float(m["p50_ms"]) * requests
    add.p95_sum += float(m["p95_ms"]) * requests
    add.confidence_sum += float(m["mean_confidence"]) * requests
    add.first_at = event.received_at if add.first_at is None else min(add.first_at, event.received_at)
    add.last_at = event.received_at if add.last_at is None else max(add.last_at, event.received_at)
    return True
