"""Events to the server: queued on disk as they happen, delivered as they come, `metrics` periodically.

The queue (:class:`~device_agent.events.EventQueue`) makes delivery survive an unreachable server
and a kill -9; the reporter decides when to send, backs off on its own, and never stops the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from .config import AgentConfig
from .errors import AuthError, TransientError
from .events import EventQueue
from .holder import ModelHolder
from .policy import Backoff
from .protocol import ServerClient, make_event

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self, queue: EventQueue, *, client: ServerClient, holder: ModelHolder, config: AgentConfig, stop: asyncio.Event
    ) -> None:
        self.queue = queue
        self.client = client
        self.holder = holder
        self.config = config
        self._stop = stop
        self._kick = asyncio.Event()

    def emit(self, type_: str, version: int | None, **fields: Any) -> None:
        self.queue.put(make_event(type_, version, **fields))
        self._kick.set()

    def wake(self) -> None:
        self._kick.set()

    async def report_forever(self) -> None:
        """Deliver queued events as they come and emit `metrics` periodically, whatever the server does."""
        queue = self.queue
        backoff = Backoff(self.config.backoff_base, self.config.backoff_max)
        next_metrics = time.monotonic() + self.config.metrics_interval
        retry_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            wake = next_metrics
            if len(queue):
                wake = min(wake, max(now, retry_at))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=max(0.0, wake - now))
            self._kick.clear()
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + self.config.metrics_interval
                summary = self.holder.metrics.take()
                if summary is not None:
                    self.emit("metrics", self.holder.version, metrics=summary)
            if not len(queue) or time.monotonic() < retry_at:
                continue
            try:
                await queue.flush(self.client)
                backoff.reset()
                retry_at = 0.0
            except (TransientError, AuthError) as e:
                delay = backoff.next_delay(getattr(e, "retry_after", None), slow=isinstance(e, AuthError))
                retry_at = time.monotonic() + delay
                log.info("events not delivered (%s); %d queued, retrying in %.1f s", e, len(queue), delay)

    async def flush(self, timeout: float) -> None:
        """Best effort on shutdown: whatever is not sent stays queued on disk for the next start."""
        if not len(self.queue):
            return
        try:
            await asyncio.wait_for(self.queue.flush(self.client), timeout)
        except (TransientError, AuthError, TimeoutError) as e:
            log.info("%d events stay queued for the next start (%s)", len(self.queue), e or "timeout")
