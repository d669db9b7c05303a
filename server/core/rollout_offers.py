"""Staged rollouts on the poll path: who is offered what, and "offered" written in batches.

The poll decides in memory from the registry view's snapshot (:class:`PollRollout`, loaded by
:func:`poll_rollouts` once per refresh): :func:`choose_offer` gives a device the rollout's version
when it is in the current cohort, else the baseline if newer, else nothing. The poll writes nothing:
:class:`OfferBuffer` keeps the first offer per (rollout, device) and a flush inserts the batch,
insert-if-absent. The rest of the rollout service is :mod:`server.core.rollouts`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from ..data import rollouts as data
from ..data.registry import Head
from ..data.rollouts import Session
from ..db.session import Database
from ..errors import DatabaseUnavailableError
from .rollout_policy import OFFERING, RolloutSpec, bucket, in_stage
from .seen import flush_forever

__all__ = ["Choice", "OfferBuffer", "PollRollout", "choose_offer", "poll_rollouts"]


# -- cohorts and the poll -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollRollout:
    """What the poll needs of an offering rollout: loaded with the registry view, never per request."""

    rollout_id: int
    head: Head  # the rollout's version
    stage: int
    percent: float
    members: frozenset[int] | None  # devices matching a non-empty selector; None: every device of the model

    def includes(self, device_pk: int, device_id: str) -> bool:
        if self.members is not None and device_pk not in self.members:
            return False
        return in_stage(bucket(self.rollout_id, device_id), self.percent)


def poll_rollouts(session: Session) -> dict[str, PollRollout]:
    """Every offering rollout by model name: one query, plus one per rollout with a selector."""
    out: dict[str, PollRollout] = {}
    for active in data.active_rollouts(session):
        r = active.rollout
        if r.state not in OFFERING or active.revoked:
            continue
        spec = RolloutSpec.from_json(r.spec)
        members = None
        if spec.selector:
            devices = data.model_devices(session, model_name=active.model, selector=spec.selector)
            members = frozenset(pk for pk, _ in devices)
        head = Head(active.model, r.model_id, active.version_id, r.version)
        out[active.model] = PollRollout(r.id, head, r.stage, spec.stages[r.stage].percent, members)
    return out


@dataclass(frozen=True, slots=True)
class Choice:
    head: Head | None  # what to offer; None: 204
    rollout: PollRollout | None = None  # set when the device is in the rollout's current cohort
    installed: bool = False  # …and already runs its version


def choose_offer(
    *,
    device_pk: int,
    device_id: str,
    current: int | None,
    baseline: Head | None,
    rollout: PollRollout | None,
) -> Choice:
    """The rollout's version for a device in its current cohort, else the baseline if newer, else nothing."""
    if rollout is not None and rollout.includes(device_pk, device_id):
        if current is None or current < rollout.head.version:
            return Choice(rollout.head, rollout)
        return Choice(None, rollout, installed=current == rollout.head.version)
    if baseline is not None and (current is None or baseline.version > current):
        return Choice(baseline)
    return Choice(None)


class OfferBuffer:
    """ "Offered" records from polls, written in batches like last-seen (no database write on the poll).

    The first offer per (rollout, device) is kept with its time and stage; a flush inserts the
    batch, skipping devices that already have a row (another process may have written it).
    """

    KEEP_ROLLOUTS = 16

    def __init__(self, db: Database, *, interval: float) -> None:
        self.db = db
        self.interval = interval
        self._pending: dict[tuple[int, int], tuple[int, datetime, bool]] = {}
        self._written: dict[int, set[int]] = {}  # rollout id → device pks known to have a row
        self._lock = threading.Lock()

    def note(self, choice: Choice, device_pk: int) -> None:
        r = choice.rollout
        if r is None:
            return
        written = self._written.get(r.rollout_id)
        if written is not None and device_pk in written:
            return
        key = (r.rollout_id, device_pk)
        if key not in self._pending:
            with self._lock:
                self._pending.setdefault(key, (r.stage, datetime.now(UTC), choice.installed))

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        rows = [
            {
                "rollout_id": rid,
                "device_pk": pk,
                "stage": stage,
                "offered_at": at,
                "installed_at": at if installed else None,
            }
            for (rid, pk), (stage, at, installed) in sorted(batch.items())
        ]
        try:
            with self.db.session() as session:
                data.record_offers(session, rows=rows)
                session.commit()
        except DatabaseUnavailableError:
            with self._lock:
                for key, value in batch.items():
                    self._pending.setdefault(key, value)
            raise
        with self._lock:
            for rid, pk in batch:
                self._written.setdefault(rid, set()).add(pk)
            while len(self._written) > self.KEEP_ROLLOUTS:
                del self._written[min(self._written)]
        return len(batch)

    async def run(self) -> None:
        await flush_forever(self.flush, self.interval, "offer")
