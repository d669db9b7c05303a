"""Events queued on disk until the server has them: DIR/events.jsonl.

An event is appended (and fsynced) *before* any attempt to send it, so an unreachable server or a
kill -9 loses nothing; delivered events are removed by rewriting the file atomically. Delivery is
at least once: a crash between the server's 2xx and the rewrite sends a batch twice.

Two limits keep a long-offline device healthy: past `cap` events the oldest `metrics` events are
dropped (lifecycle events never are), and a batch the server refuses as invalid (4xx) is split until
the offending events are found; each is sent once more with only the contract's fields (a strict
server may refuse our extra ones), and otherwise set aside in events.rejected.jsonl, so one bad
event cannot block the queue forever. A batch answered 500 is split the same way, as a server may
fail on one event it should have refused (a NUL in a detail, on PostgreSQL): an event answered 500
on its own while others got through is passed over, and set aside after :data:`STRIKES` such
flushes. A server that fails everything (an outage) stops the flush after :data:`MAX_BLIND_FAILURES`
requests, and nothing is set aside.

A full disk never stops the agent: an event that cannot be appended stays queued in memory (and is
delivered from there) unless it is a `metrics` event, which is dropped; the file is rewritten
whole at the next write that fits. A file that cannot be read back (bad bytes, a line nested past
the recursion limit) loses only its unreadable lines.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import RejectedError, ServerBusyError
from .fsutil import Disk
from .protocol import ServerClient

log = logging.getLogger(__name__)
BATCH = 100
# DESIGN.md's event fields; anything else an event carries is a courtesy the server may refuse.
CONTRACT_FIELDS = frozenset({"type", "version", "reason", "at", "metrics", "installed_version"})
STRIKES = 3  # flushes in which an event alone was answered 500 while others got through, before it is set aside
MAX_BLIND_FAILURES = 10  # 500s in one flush before any event got through: the server is down, not one event bad


class _Flush:
    """One flush's bookkeeping of 500 answers."""

    def __init__(self) -> None:
        self.passed_over: set[int] = set()  # ids of events answered 500 on their own
        self.blind_failures = 0  # 500s before anything got through
        self.delivered = 0
        self.last_error: ServerBusyError | None = None


class EventQueue:
    def __init__(self, path: Path, *, durable: bool = True, cap: int = 10_000, disk: Disk | None = None) -> None:
        self.path = path
        self.durable = durable
        self.cap = cap
        self.disk = disk or Disk()
        self._lock = threading.Lock()
        self.dropped_lines = 0  # unreadable lines found at start
        self._events: list[dict[str, Any]] = self._read()
        self._unsaved = True  # the file is rewritten whole at the next chance (and a torn last line with it)
        self._rewrite()
        self.delivered = 0
        self._strikes: dict[int, int] = {}  # id(event) → flushes it was passed over in (see STRIKES)

    def _read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:  # a directory in its place, an unreadable sector …
            log.warning("event queue %s is unreadable (%s); starting empty", self.path, e)
            self.dropped_lines += 1
            return []
        events = []
        for line in lines:
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, dict):
                events.append(value)
            else:
                self.dropped_lines += 1
        if self.dropped_lines:
            log.warning("dropped %d unreadable line(s) of %s", self.dropped_lines, self.path)
        return events

    def _rewrite(self) -> bool:
        """Write the queue out whole; False (logged) when the disk refuses: the events stay in memory."""
        data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in self._events)
        try:
            if self.path.is_dir():
                self.path.rmdir()
            self.disk.write_atomic(self.path, data, durable=self.durable)
        except OSError as e:
            if not self._unsaved:
                log.warning("event queue not saved (%s); %d event(s) kept in memory", e, len(self._events))
            self._unsaved = True
            return False
        self._unsaved = False
        return True

    def __len__(self) -> int:
        return len(self._events)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def put(self, event: Mapping[str, Any]) -> None:
        """Queue an event; never raises. On a full disk a `metrics` event is dropped, any other is
        kept in memory until the file can be written again."""
        line = json.dumps(dict(event), separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._events.append(dict(event))
            if self._unsaved:
                saved = self._rewrite()
            else:
                try:
                    self.disk.append(self.path, line, durable=self.durable)
                    saved = True
                except OSError as e:
                    log.warning("event queue not saved (%s)", e)
                    self._unsaved, saved = True, False  # a torn tail is dropped by the next whole rewrite
            if not saved and event.get("type") == "metrics":
                self._events.pop()
                log.info("metrics event dropped: the disk is full")
            if len(self._events) > self.cap:
                self._shed()

    def _shed(self) -> None:
        excess = len(self._events) - self.cap
        kept: list[dict[str, Any]] = []
        for e in self._events:
            if excess and e.get("type") == "metrics":
                excess -= 1
                continue
            kept.append(e)
        self._events = kept
        self._rewrite()

    def _drop(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            ids = {id(e) for e in events}
            self._events = [e for e in self._events if id(e) not in ids]
            for i in ids:  # an id is an address: a later event may get it
                self._strikes.pop(i, None)
            self._rewrite()

    def _set_aside(self, event: dict[str, Any], why: str) -> None:
        rejected = self.path.parent / "events.rejected.jsonl"
        log.error("server refused event %s (%s); kept in %s", event.get("type"), why, rejected.name)
        try:
            self.disk.append(rejected, (json.dumps({"event": event, "refused": why}) + "\n").encode(), durable=False)
        except OSError as e:
            log.warning("refused event not kept (%s)", e)
        self._drop([event])

    async def _send_minimal(self, client: ServerClient, event: dict[str, Any], why: str) -> int:
        """A server with a strict schema may refuse our extra fields (`detail`, `source` …): the
        contract's fields alone must still get through, or the fleet view loses an install."""
        core = {k: v for k, v in event.items() if k in CONTRACT_FIELDS}
        if core != event:
            try:
                await client.post_events([core])
            except RejectedError as e:
                why = str(e)
            else:
                log.warning("server refused the extra fields of a %s event; sent without them", event.get("type"))
                self._drop([event])
                self.delivered += 1
                return 1
        self._set_aside(event, why)
        return 0

    async def flush(self, client: ServerClient) -> int:
        """Send everything queued, oldest first. Transport errors propagate; the queue keeps its events."""
        sent = 0
        run = _Flush()
        while True:
            with self._lock:
                batch = [e for e in self._events if id(e) not in run.passed_over][:BATCH]
            if not batch or run.blind_failures >= MAX_BLIND_FAILURES:
                break
            sent += await self._send(client, batch, run)
        if run.passed_over:
            self._strike(run)
        if run.last_error is not None and (run.passed_over or not run.delivered):
            raise run.last_error
        return sent

    def _strike(self, run: _Flush) -> None:
        """Events answered 500 alone in a flush where others got through: one strike each."""
        if not run.delivered:
            return  # nothing got through: the server may be down; no event is to blame
        for event in self.snapshot():
            if id(event) in run.passed_over:
                strikes = self._strikes.get(id(event), 0) + 1
                self._strikes[id(event)] = strikes
                if strikes >= STRIKES:
                    run.passed_over.discard(id(event))
                    self._strikes.pop(id(event), None)
                    self._set_aside(
                        event, f"answered {run.last_error} in {strikes} flushes while other events got through"
                    )

    async def _send(self, client: ServerClient, batch: list[dict[str, Any]], run: _Flush) -> int:
        if run.blind_failures >= MAX_BLIND_FAILURES:
            return 0
        try:
            await client.post_events(batch)
        except RejectedError as e:
            if len(batch) == 1:
                return await self._send_minimal(client, batch[0], str(e))
            half = len(batch) // 2
            return await self._send(client, batch[:half], run) + await self._send(client, batch[half:], run)
        except ServerBusyError as e:
            if e.status != 500:  # 429, 502, 503, 504: overloaded or away; the batch is not to blame
                raise
            run.last_error = e
            if not run.delivered:
                run.blind_failures += 1
            if len(batch) == 1:
                run.passed_over.add(id(batch[0]))
                return 0
            half = len(batch) // 2
            return await self._send(client, batch[:half], run) + await self._send(client, batch[half:], run)
        self._drop(batch)
        self.delivered += len(batch)
        run.delivered += len(batch)
        return len(batch)
