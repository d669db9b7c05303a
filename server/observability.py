"""Prometheus metrics and structured request logs.

Each app gets its own :class:`Metrics` (its own registry), so that two apps in one process — tests,
or the benchmark — never share counters. The request middleware is plain ASGI (no per-request
task or body buffering): it times the request, counts it under its *route template* (never the
raw path, whose blob digests would explode the label set) and hands one entry per request to the
:class:`AccessLog`, which writes them as JSON lines in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("ota.access")


class Metrics:
    """Every metric the server exports; names follow Prometheus conventions (`_total` added by the client)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ota_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.duration = Histogram(
            "ota_http_request_duration_seconds",
            "HTTP request duration",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.errors = Counter(
            "ota_errors", "Problem responses by status and problem type", ["status", "type"], registry=r
        )
        polls = Counter("ota_polls", "Update polls by answer", ["answer"], registry=r)
        self.poll_update = polls.labels("update")
        self.poll_current = polls.labels("current")
        self.poll_not_modified = polls.labels("not_modified")
        offers = Counter("ota_offers", "Update offers by what the device is told to download", ["kind"], registry=r)
        offer_bytes = Counter(
            "ota_offer_bytes", "Bytes devices were offered to download, full payload vs delta", ["kind"], registry=r
        )
        self.offers_full, self.offers_delta = offers.labels("full"), offers.labels("delta")
        self.offer_bytes_full, self.offer_bytes_delta = offer_bytes.labels("full"), offer_bytes.labels("delta")
        self.blob_bytes = Counter("ota_blob_bytes_sent", "Bytes streamed by GET /v1/blobs", registry=r)
        self.publishes = Counter("ota_publishes", "Publish attempts by result", ["result"], registry=r)
        self.delta_builds = Counter(
            "ota_delta_builds", "Deltas computed by this process, by result", ["result"], registry=r
        )
        self.delta_seconds = Histogram(
            "ota_delta_build_seconds",
            "Time to compute and store one delta",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.enrollments = Counter("ota_enrollments", "Devices enrolled", registry=r)
        self.device_tokens = Counter(
            "ota_device_tokens_issued",
            "Device tokens issued, by how (enrolled, re_enrolled, renewed)",
            ["how"],
            registry=r,
        )
        self.enrollments_limited = Counter(
            "ota_enrollments_rate_limited",
            "Enrollments refused with 429 by this process, by the bucket that was empty",
            ["scope"],
            registry=r,
        )
        self.device_events = Counter("ota_device_events", "Device events recorded", ["type"], registry=r)
        self.rollout_transitions = Counter(
            "ota_rollout_transitions",
            "Rollout state changes made by this process (each is counted by exactly one process)",
            ["event"],
            registry=r,
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `fields` passed as `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that also takes pre-formatted JSON lines in bulk (from :class:`AccessLog`)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())

    def write_lines(self, text: str) -> None:
        with self.lock or contextlib.nullcontext():
            self.stream.write(text)
            self.flush()


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the `ota` loggers (called by the CLI, not by the app factory)."""
    handler = JsonLinesHandler(sys.stderr)
    root = logging.getLogger("ota")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class AccessLog:
    """One JSON line per request (logger ``ota.access``), written in batches.

    A `logging` call costs about as much as the whole update poll (a record, a formatter, a write
    system call each time). Requests are therefore only *noted* here — a tuple appended to a list —
    and written every ``FLUSH_SECONDS`` (or every ``BATCH`` entries): formatted straight to JSON and
    written in one call to each :class:`JsonLinesHandler`, under the handler's lock so they never
    interleave with other log lines; any other handler (a test's capture, a custom configuration)
    gets ordinary log records. The trade is nginx's ``access_log … buffer=``: a crash loses at most
    the last half second of access lines, never an event or a state change.
    """

    FLUSH_SECONDS = 0.5
    BATCH = 512
    FIELDS = ("method", "path", "route", "status", "duration_ms", "device_id", "admin", "client")

    def __init__(self, logger: logging.Logger = access_log) -> None:
        self.logger = logger
        self._entries: list[tuple[Any, ...]] = []
        self._second = -1
        self._stamp = ""

    def note(self, entry: tuple[Any, ...]) -> None:
        """(time, method, path, route, status, duration ms, device id, admin, client)."""
        self._entries.append(entry)
        if len(self._entries) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        entries, self._entries = self._entries, []
        if not entries:
            return
        text: str | None = None
        records: list[logging.LogRecord] | None = None
        node: logging.Logger | None = self.logger
        while node is not None:
            for handler in node.handlers:
                if handler.level > logging.INFO:
                    continue
                if isinstance(handler, JsonLinesHandler):
                    text = text if text is not None else "".join(self._line(e) for e in entries)
                    handler.write_lines(text)
                else:
                    records = records if records is not None else [self._record(e) for e in entries]
                    for record in records:
                        handler.handle(record)
            node = node.parent if node.propagate else None

    def _fields(self, entry: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.FIELDS, entry[1:], strict=True))

    def _line(self, entry: tuple[Any, ...]) -> str:
        t, method, path, route, status, duration, device_id, admin, client = entry
        second = int(t)
        if second != self._second:  # one timestamp string per second, milliseconds appended
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        text = json.dumps  # strings are escaped by json; the rest are numbers or null
        return (
            f'{{"ts":"{self._stamp}.{int((t - second) * 1000):03d}+00:00","level":"info",'
            f'"logger":{text(self.logger.name)},"msg":"request","method":{text(method)},"path":{text(path)},'
            f'"route":{text(route)},"status":{int(status)},"duration_ms":{float(duration)},'
            f'"device_id":{text(device_id)},"admin":{text(admin)},"client":{text(client)}}}\n'
        )

    def _record(self, entry: tuple[Any, ...]) -> logging.LogRecord:
        record = self.logger.makeRecord(
            self.logger.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": self._fields(entry)}
        )
        record.created = entry[0]
        return record

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_SECONDS)
            self.flush()


class RequestObserver:
    """ASGI middleware: metrics and one access-log entry per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access
        # Labelled children, looked up once per (method, route, status): `labels()` is slow for a hot path.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            series = (self.metrics.requests.labels(method, route, str(status)), self.metrics.duration.labels(route))
            self._children[key] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            count, duration = self._series(scope["method"], route, status)
            count.inc()
            duration.observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                state = scope.get("state") or {}
                self.access.note(
                    (
                        time.time(),
                        scope["method"],
                        scope["path"],
                        route,
                        status,
                        round(elapsed * 1000, 3),
                        state.get("device_id"),
                        state.get("admin"),
                        (scope.get("client") or (None,))[0],
                    )
                )
