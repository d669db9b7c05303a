"""The loops a server process runs in the background, beside the requests it answers.

:func:`refresh_forever` reloads an in-memory view (the registry snapshot, the served trust chain) or
judges the active rollouts at a steady pace: every `interval` seconds from the start of one run to
the start of the next, the blocking work in a worker thread. A database that is down is logged as a
warning and the next run comes at its usual time; any other failure (a bug, a stored document that
no longer parses) is logged with its traceback and retried the same way, so one bad row never stops
a process from refreshing for the rest of its life. (Buffers that write what they hold use
:func:`server.core.seen.flush_forever`.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from ..errors import DatabaseUnavailableError


async def refresh_forever(refresh: Callable[[], object], interval: float, what: str, *, log: logging.Logger) -> None:
    """Run the blocking `refresh` every `interval` seconds until cancelled; a failure to reach the
    database is logged on `log` as "`what` failed", any other error with its traceback, and both are
    retried at the next interval."""
    while True:
        began = time.monotonic()
        try:
            await run_in_threadpool(refresh)
        except DatabaseUnavailableError as e:
            log.warning("%s failed: %s", what, e.detail)
        except Exception:
            log.exception("%s failed unexpectedly; retrying in %g s", what, interval)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))
