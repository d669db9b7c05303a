"""`ota-server gc` inside `serve`: the storage GC and event retention every ``OTA_GC_INTERVAL_SECONDS``.

Off by default (0: run ``ota-server gc`` from cron instead). When on, every server process runs
this loop — at start, then once per interval — and per interval at most one process collects:

1. *The interval's ticket.* A ``gc-schedule`` lease, taken only when nobody holds it or it has
   expired (its holder included), for 95 % of the interval and never released: the process that
   takes it runs; every other process (another worker, another server) finds it held and skips
   the interval. A process that died leaves the ticket to expire.
2. *The gc lease* (:class:`server.core.gc.Maintenance`), the very one ``ota-server gc`` holds, so
   that two collections never run at once: a run by hand or from cron at that moment makes this one
   skip (and the other way round: exit 4).
3. *The run:* :meth:`StorageGC.sweep` then :meth:`EventRetention.prune`, as the command does, with
   ``OTA_GC_GRACE_SECONDS``, an orphan age of an hour and ``OTA_EVENT_RETENTION_DAYS``; one log line
   (logger ``ota.gc``) with its counts.

A database or storage that fails is logged and tried again the next interval; nothing but the
server's shutdown stops the loop. A process stopped in the middle of a run leaves rows and blobs
consistent (:mod:`server.core.gc`) and the gc lease to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from starlette.concurrency import run_in_threadpool

from ..data import leases
from ..db.session import Database, utcnow
from ..errors import MaintenanceBusyError, OtaServerError
from ..storage import Storage
from .gc import ORPHAN_SECONDS, Maintenance, StorageGC, SweepResult
from .retention import EventRetention, RetentionResult

log = logging.getLogger("ota.gc")
TICKET = "gc-schedule"
TICKET_SHARE = 0.95  # of the interval: the holder's own next tick finds its ticket expired


@dataclass(frozen=True)
class HousekeepingRun:
    swept: SweepResult
    kept: RetentionResult


class Housekeeping:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        *,
        interval: float,
        grace_seconds: float,
        retention_days: int,
        orphan_seconds: float = ORPHAN_SECONDS,
    ) -> None:
        self.db = db
        self.interval = interval
        self.maintenance = Maintenance(db)
        self.collector = StorageGC(
            db, storage, self.maintenance, grace_seconds=grace_seconds, orphan_seconds=orphan_seconds
        )
        self.retention = EventRetention(db, self.maintenance, days=retention_days)
        self.runs = 0  # intervals this process collected in
        self.skipped = 0  # intervals another process (or a gc by hand) had

    def tick(self) -> HousekeepingRun | None:
        """One interval (blocking): collect if this process takes the interval's ticket and the gc
        lease; None when another process has either."""
        now = utcnow()
        until = now + timedelta(seconds=self.interval * TICKET_SHARE)
        with self.db.session() as session:
            mine = leases.claim(session, name=TICKET, holder=self.maintenance.holder, until=until, now=now)
            session.commit()
        if not mine:
            log.debug("gc: another process collects in this interval")
            self.skipped += 1
            return None
        try:
            with self.maintenance.lease():
                swept = self.collector.sweep()
                kept = self.retention.prune()
        except MaintenanceBusyError as e:  # `ota-server gc` runs now, or took over a run that overran its lease
            log.info("gc: not this interval: %s", e)
            self.skipped += 1
            return None
        plan = swept.plan
        log.info(
            "gc: collected %d versions and %d deltas, deleted %d blobs (%d bytes); %d versions wait out the "
            "grace period; deleted %d events older than %s UTC (%d metrics windows kept as summaries)",
            len(plan.collect),
            len(plan.deltas),
            swept.deleted,
            swept.deleted_bytes,
            len(plan.pending),
            kept.deleted,
            f"{kept.cutoff:%Y-%m-%d %H:%M}",
            kept.summarised,
        )
        self.runs += 1  # counted once said: a reader of the count finds the line logged
        return HousekeepingRun(swept, kept)

    async def run(self) -> None:
        """Tick now and then every `interval` seconds until cancelled; failures wait for the next one."""
        while True:
            began = time.monotonic()
            try:
                await run_in_threadpool(self.tick)
            except OtaServerError as e:  # the database or storage failed: the next interval tries again
                log.warning("gc failed, next try in %g s: %s", self.interval, e.detail)
            except Exception:  # a bug must not end housekeeping for the life of the process; logged once
                log.exception("gc failed, next try in %g s", self.interval)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))
