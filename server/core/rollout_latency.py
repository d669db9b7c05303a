"""Each device's latency on a rollout's two versions, for the per-device latency gate.

The pooled running sums in ``rollout_metrics`` cannot say which device a request came from, and
per-device sums have no table (adding one needs a migration). They are kept here instead, in
each process's memory, built from what every process shares: the device event log
(``device_events``, where every ``metrics`` event is stored). Each evaluation reads only the
events appended since the last one — a range of the log's primary key, starting at the log's last
id when the rollout was created (``RolloutSpec.events_from``) — so every process that reads the
same log reaches the same sums, and a restarted process rebuilds them.

Ids are taken when an event is inserted, not when it commits, so an event may become visible
after one with a higher id. Every read therefore re-reads the ids of the last :data:`OVERLAP_SECONDS`
and skips those already folded in: a device's report commits well within that.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..data import rollouts as data
from ..data.rollouts import ACTIVE_STATES, Session
from ..db.models import Rollout
from .rollout_policy import DeviceLatency, RolloutSpec

OVERLAP_SECONDS = 30.0
KEEP_ROLLOUTS = 16


@dataclass
class _Folded:
    """What has been read of one rollout's events."""

    after_id: int  # every event up to this id is folded in for good
    marks: deque[tuple[float, int]] = field(default_factory=deque)  # (when read, the highest id then)
    recent: set[int] = field(default_factory=set)  # ids above after_id already folded in
    sums: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (version, pk) → [requests, Σ p95·req]
    lock: threading.Lock = field(default_factory=threading.Lock)


class DeviceLatencies:
    """Per rollout: version → device pk → :class:`DeviceLatency`, read incrementally from the event log."""

    def __init__(self) -> None:
        self._rollouts: dict[int, _Folded] = {}
        self._lock = threading.Lock()

    def read(
        self, session: Session, r: Rollout, spec: RolloutSpec, model: str, members: frozenset[int]
    ) -> dict[int, dict[int, DeviceLatency]]:
        """The sums of the devices in `members` (the selector's), after folding in new events."""
        with self._lock:
            folded = self._rollouts.get(r.id)
            if folded is None:
                folded = self._rollouts[r.id] = _Folded(after_id=spec.events_from)
                while len(self._rollouts) > KEEP_ROLLOUTS:
                    del self._rollouts[min(self._rollouts)]
        versions = [r.version] if spec.baseline is None else [r.version, spec.baseline]
        with folded.lock:
            now = time.monotonic()
            rows = data.metric_events(
                session,
                model_name=model,
                versions=versions,
                after_id=folded.after_id,
                since=r.created_at,
                until=None if r.state in ACTIVE_STATES else r.updated_at,  # a finished rollout stopped counting
            )
            for event_id, pk, version, metrics in rows:
                if event_id in folded.recent:
                    continue
                folded.recent.add(event_id)
                _fold(folded.sums, pk, version, metrics)
            folded.marks.append((now, max((row[0] for row in rows), default=folded.after_id)))
            while len(folded.marks) > 1 and folded.marks[1][0] <= now - OVERLAP_SECONDS:
                folded.marks.popleft()
            when, highest = folded.marks[0]
            if when <= now - OVERLAP_SECONDS and highest > folded.after_id:
                folded.after_id = highest  # older than the overlap: nothing below it can still appear
                folded.recent = {i for i in folded.recent if i > highest}
            out: dict[int, dict[int, DeviceLatency]] = {v: {} for v in versions}
            for (version, pk), (requests, p95_sum) in folded.sums.items():
                if pk in members:
                    out[version][pk] = DeviceLatency(int(requests), p95_sum)
        return out


def _fold(
    sums: dict[tuple[int, int], list[float]], pk: int, version: int, metrics: Mapping[str, object] | None
) -> None:
    """Add one metrics window, if it is one a gate can use (requests and a finite p95)."""
    m = metrics or {}
    if not {"p50_ms", "p95_ms", "mean_confidence"} <= m.keys():  # what the pooled sums take (rollout_events)
        return
    requests, p95 = m.get("requests"), m["p95_ms"]
    if not isinstance(requests, int | float) or not isinstance(p95, int | float):
        return
    if not math.isfinite(p95) or not math.isfinite(requests) or int(requests) <= 0 or p95 < 0:
        return
    entry = sums.setdefault((version, pk), [0.0, 0.0])
    entry[0] += int(requests)
    entry[1] += p95 * int(requests)
