"""Last-seen times from polls, written in batches.

Every poll would otherwise be a database write. Instead a poll adds its device to a set in memory,
and every ``OTA_SEEN_FLUSH_SECONDS`` a background task writes one timestamp — the time of that
flush — for all of them in a single statement (and once more at shutdown). So last-seen has the
resolution of the flush interval, and a crash loses at most one interval of it — never an event, a
status or an installed version, which devices report through /v1/device/events and which are
written at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool

from ..data import devices as device_data
from ..db.session import Database
from ..errors import DatabaseUnavailableError

log = logging.getLogger("ota.seen")


async def flush_forever(flush: Callable[[], int], interval: float, what: str) -> None:
    """Run a buffer's blocking `flush` every `interval` seconds, off the event loop; a database that
    is down is logged and the buffer keeps what it holds for the next round; any other error is logged
    with its traceback and retried the same way (a flusher that died would stop recording for good)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(flush)
        except DatabaseUnavailableError as e:
            log.warning("%s flush failed, will retry: %s", what, e.detail)
        except Exception:
            log.exception("%s flush failed unexpectedly, will retry", what)


class SeenBuffer:
    def __init__(self, db: Database, *, interval: float) -> None:
        self.db = db
        self.interval = interval
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def mark(self, device_pk: int) -> None:
        with self._lock:
            self._seen.add(device_pk)

    def flush(self) -> int:
        """Write the buffered devices; on a database failure they stay buffered for the next try."""
        with self._lock:
            batch, self._seen = self._seen, set()
        if not batch:
            return 0
        try:
            with self.db.session() as session:
                device_data.touch_last_seen(session, device_pks=sorted(batch), seen=datetime.now(UTC))
                session.commit()
        except DatabaseUnavailableError:
            with self._lock:
                self._seen |= batch
            raise
        return len(batch)

    async def run(self) -> None:
        await flush_forever(self.flush, self.interval, "last-seen")
