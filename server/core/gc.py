"""`ota-server gc`: the storage GC (mark, then sweep) and event retention, one process at a time.

**Order of a run, and why it is safe while the server serves** (the story in full:
docs/storage-lifecycle.md):

1. *Lease.* One run at a time: a ``maintenance_leases`` row, renewed in every transaction of the run.
2. *Mark.* Versions found collectable (:mod:`server.core.lifecycle`) get ``unneeded_since``;
   versions needed again lose it. Nothing is deleted.
3. *List* the blob store. A blob written after this listing is never deleted by this run.
4. *Collect,* in one transaction under the exclusive blob lock: the facts are read again and
   judged again, and versions collectable for longer than the grace period are marked collected,
   with the deltas from or to them. From here on no process offers or builds them: the registry
   view leaves collected versions out of the delta bases, a collected delta is no longer `ready`.
5. *Delete* the blobs no remaining row names, in batches, each batch in a transaction under the
   exclusive blob lock that first re-reads which blobs live rows name (a publish that committed
   a row naming one of them since step 4 keeps it). A publish holds the lock shared while it
   checks its blobs and inserts its row (writing a blob again if the GC deleted it meanwhile), so
   a committed version always has its blobs.

Why the grace period: a version stops being offered before it becomes collectable, but a device
may still be downloading it with a URL it got just before (valid ``OTA_DOWNLOAD_URL_SECONDS``).
The default grace (a day) outlasts any such URL. A crash anywhere leaves rows and blobs consistent:
rows are marked collected before their blobs go, and the next run deletes what is left.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..data import leases
from ..data import lifecycle as data
from ..db.session import Database, Session, utcnow
from ..errors import MaintenanceBusyError
from ..storage import Storage
from .lifecycle import Plan, plan_collection

log = logging.getLogger("ota.gc")
LEASE = "gc"
LEASE_SECONDS = 600.0
ORPHAN_SECONDS = 3600.0  # a blob no row names is deleted only this old: a publish or delta build writes it first
BLOB_BATCH = 50  # blobs deleted per transaction: the blob lock is held for one batch only

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SweepResult:
    plan: Plan
    deleted: int  # blobs deleted
    deleted_bytes: int
    skipped: int  # blobs a new row named before their batch (kept)


class Maintenance:
    """The lease every maintenance run holds (blocking; one holder across processes)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @contextmanager
    def lease(self) -> Iterator[None]:
        now = utcnow()
        with self.db.session() as session:
            taken = leases.acquire(
                session, name=LEASE, holder=self.holder, until=now + timedelta(seconds=LEASE_SECONDS), now=now
            )
            other = None if taken else leases.current(session, name=LEASE)
            session.commit()
        if not taken:
            who = f"{other.holder} until {other.expires_at:%Y-%m-%d %H:%M:%S} UTC" if other else "another process"
            raise MaintenanceBusyError(f"another gc is running ({who})")
        try:
            yield
        finally:
            with self.db.session() as session:
                leases.release(session, name=LEASE, holder=self.holder)
                session.commit()

    def pace(self, began: float) -> None:
        """After a batch that began at `began` (``time.monotonic()``): on SQLite, leave its single write
        lock free for as long as the batch held it (at most 1 s), so that devices' writes — which wait
        for it at most the busy timeout — are not starved by batches that follow each other at once.
        PostgreSQL locks rows: its writers never wait for these batches."""
        if self.db.dialect == "sqlite":
            time.sleep(min(1.0, time.monotonic() - began))

    def renew(self, session: Session) -> None:
        """Renew the lease as the transaction's first write (on SQLite this takes the write lock)."""
        now = utcnow()
        if not leases.renew(
            session, name=LEASE, holder=self.holder, until=now + timedelta(seconds=LEASE_SECONDS), now=now
        ):
            raise MaintenanceBusyError("the gc lease was lost (this run took too long); another run took over")


class StorageGC:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        maintenance: Maintenance,
        *,
        grace_seconds: float,
        orphan_seconds: float = ORPHAN_SECONDS,
    ) -> None:
        self.db = db
        self.storage = storage
        self.maintenance = maintenance
        self.grace = timedelta(seconds=grace_seconds)
        self.orphan_age = timedelta(seconds=orphan_seconds)

    def plan(self, now: datetime | None = None) -> Plan:
        """What a run would do now (writes nothing: the dry run)."""
        listing = list(self.storage.list_blobs())
        with self.db.session() as session:
            facts = data.load_facts(session)
        return plan_collection(facts, listing, now=now or utcnow(), grace=self.grace, orphan_age=self.orphan_age)

    def sweep(self, progress: Progress = lambda _: None) -> SweepResult:
        """Mark, collect and delete (the caller holds the lease: :meth:`Maintenance.lease`)."""
        with self.db.session() as session:
            now = utcnow()
            plan = plan_collection(data.load_facts(session), (), now=now, grace=self.grace, orphan_age=self.orphan_age)
            data.mark_unneeded(session, version_ids=[v.facts.id for v in plan.versions if v.collectable], at=now)
            data.clear_unneeded(
                session,
                version_ids=[v.facts.id for v in plan.versions if v.needed_by and v.facts.unneeded_since is not None],
            )
            session.commit()
        listing = list(self.storage.list_blobs())
        with self.db.session() as session:
            self.maintenance.renew(session)
            data.lock_blobs(session, exclusive=True)
            now = utcnow()
            plan = plan_collection(
                data.load_facts(session), listing, now=now, grace=self.grace, orphan_age=self.orphan_age
            )
            data.collect_versions(session, version_ids=[v.facts.id for v in plan.collect], at=now)
            data.collect_deltas(session, delta_ids=[d.facts.id for d in plan.deltas], at=now)
            session.commit()
        for v in plan.collect:
            progress(f"collected {v.facts.model} v{v.facts.version} ({v.why})")
        deleted = deleted_bytes = skipped = 0
        total = len(plan.blobs)
        for start in range(0, total, BLOB_BATCH):
            batch = plan.blobs[start : start + BLOB_BATCH]
            began = time.monotonic()
            with self.db.session() as session:
                self.maintenance.renew(session)
                data.lock_blobs(session, exclusive=True)
                live = data.live_blobs(session)
                for blob in batch:
                    if blob.sha256 in live:
                        skipped += 1
                        continue
                    if self.storage.delete(blob.sha256):
                        deleted += 1
                        deleted_bytes += blob.size
                session.commit()
            progress(f"deleted {deleted}/{total} blobs ({size_text(deleted_bytes)})")
            self.maintenance.pace(began)
        log.debug(  # the caller says it in one line with the rest of its run (the CLI, server.core.housekeeping)
            "gc collected %d versions, %d deltas, deleted %d blobs (%d bytes)",
            len(plan.collect),
            len(plan.deltas),
            deleted,
            deleted_bytes,
        )
        return SweepResult(plan, deleted, deleted_bytes, skipped)


def size_text(n: int) -> str:
    """Bytes for people: 812 B, 12.3 kB, 4.1 MB."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"
