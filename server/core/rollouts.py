"""Staged rollouts, the service: the evaluation loop, transitions, device events.

The policy — cohorts, the specification, counting, gates and verdicts — is pure arithmetic in
:mod:`server.core.rollout_policy`; this module reads what it needs, asks the policy, and applies
the answer. A version reaches devices only through a rollout; outside rollouts a device is offered
its model's *baseline* (the version of the last completed rollout).

- **Offers** (:func:`choose_offer`, :class:`OfferBuffer`, in :mod:`server.core.rollout_offers` and
  re-exported here): the poll decides in memory from the registry view's snapshot; "offered" is
  buffered and written in batches, insert-if-absent.
- **Evaluation** (:meth:`RolloutService.evaluate_once`, :meth:`RolloutService.run`): every process
  judges every active rollout every ``OTA_ROLLOUT_EVAL_SECONDS``, from ``rollout_devices`` and the
  running sums in ``rollout_metrics``.
- **Transitions** (:class:`RolloutService`): every change, by the controller or an admin, is one
  compare-and-set on the rollout's ``revision`` plus its history row in the same transaction; only
  the process whose update matched counts it. So two server processes evaluating the same rollout
  at the same moment make exactly one transition, never two and never none.
- **Device events** (:meth:`RolloutService.record_events`, in :mod:`server.core.rollout_events`):
  installs, failures and metrics folded into the rollout they are about, in the caller's transaction.
- **Per-device latency** (:mod:`server.core.rollout_latency`): each device's p95 sums per version,
  read incrementally from the device event log, for the latency gate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..data import registry as registry_data
from ..data import rollouts as data
from ..data.rollouts import Session
from ..db.models import Rollout
from ..db.session import Database, utcnow
from ..errors import (
    ModelNotFoundError,
    RolloutActiveError,
    RolloutNotFoundError,
    RolloutTransitionError,
    VersionNotAboveBaselineError,
    VersionNotFoundError,
    VersionRevokedError,
)
from ..observability import Metrics
from .deltas import DeltaService
from .key_revocation import Revocations, revoke_if_condemned
from .loops import refresh_forever
from .rollout_events import EventLike, record_events
from .rollout_latency import DeviceLatencies
from .rollout_offers import Choice, OfferBuffer, PollRollout, choose_offer, poll_rollouts
from .rollout_policy import (
    ABORTED,
    COMPLETED,
    OFFERING,
    RUNNING,
    Action,
    Counts,
    Decision,
    Gate,
    GateResult,
    RolloutSpec,
    Stage,
    bucket,
    count_stages,
    decide,
    judge_gates,
    plain_number,
    plan_action,
    stage_state,
)

__all__ = [
    "Action",
    "Choice",
    "Gate",
    "OfferBuffer",
    "PollRollout",
    "RolloutService",
    "RolloutSpec",
    "RolloutView",
    "Stage",
    "choose_offer",
    "poll_rollouts",
]

log = logging.getLogger("ota.rollouts")

SYSTEM = "system"


# -- what an admin reads ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageView:
    percent: float
    soak_seconds: int
    state: str  # passed | running | paused | aborted | not_started
    started_at: datetime | None
    counts: Counts


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    event: str
    stage: int
    detail: str | None
    by: str


@dataclass(frozen=True)
class RolloutView:
    id: int
    model: str
    version: int
    state: str
    reason: str | None
    stage: int
    spec: RolloutSpec
    created_by: str
    created_at: datetime
    updated_at: datetime
    stages: list[StageView]
    gates: list[GateResult]
    history: list[HistoryEntry]


# -- the service --------------------------------------------------------------------------------


class RolloutService:
    """Creates rollouts, applies admin actions, evaluates active rollouts, folds device events in.

    Each method owns its transaction. `on_change` (the registry view's refresh) runs after every
    transition so that this process's polls follow at once; other processes within their cache
    interval.
    """

    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        deltas: DeltaService,
        *,
        on_change: Callable[[], object],
        eval_seconds: float,
        flush_seconds: float,
        revocations: Callable[[], Revocations | None] = lambda: None,
    ) -> None:
        self.db = db
        self.revocations = revocations  # the stored keys document's revoked keys: checked at create
        self.metrics = metrics
        self.deltas = deltas
        self.on_change = on_change
        self.eval_seconds = eval_seconds
        self.offers = OfferBuffer(db, interval=flush_seconds)
        self.latencies = DeviceLatencies()
        self._judged: dict[int, tuple[float, datetime, RolloutView]] = {}  # active rollout → (when, counted at, view)
        self._buckets: dict[int, dict[int, int]] = {}  # rollout id → device pk → bucket (ids never change)
        self._lock = threading.Lock()

    # -- admin ----------------------------------------------------------------------------------

    def create(self, *, model: str, version: int, spec: RolloutSpec, by: str) -> RolloutView:
        now = utcnow()
        revocations = self.revocations()  # before the transaction: it reads in its own session
        with self.db.session() as session:
            m = registry_data.get_model(session, name=model)
            if m is None:
                raise ModelNotFoundError(f"no model {model!r} has been published")
            row = registry_data.get_version(session, model_id=m.id, version=version)
            if row is None:
                raise VersionNotFoundError(f"model {model!r} has no version {version}")
            if row.revoked_at is None and revocations is not None:  # published just before the keys document?
                condemned = revoke_if_condemned(session, revocations, model=model, row=row)
                if condemned is not None:
                    session.commit()
                    log.warning("%s v%d revoked: %s", model, version, condemned.reason)
                    raise VersionRevokedError(
                        f"version {version} of {model!r} is revoked ({condemned.reason}); it cannot be rolled out"
                    )
            if row.revoked_at is not None:
                why = f" ({row.revoked_reason})" if row.revoked_reason else ""
                raise VersionRevokedError(f"version {version} of {model!r} is revoked{why}; it cannot be rolled out")
            if m.baseline_version is not None and version <= m.baseline_version:
                raise VersionNotAboveBaselineError(
                    f"version {version} of {model!r} is not above its baseline v{m.baseline_version}; "
                    "to go back, publish the old weights as a new version and roll that out"
                )
            active = data.active_for_model(session, model_name=model)
            if active is not None:
                raise RolloutActiveError(
                    f"{model!r} already has an active rollout ({active.rollout.id}, v{active.rollout.version}, "
                    f"{active.rollout.state}); abort it or let it finish first"
                )
            spec = replace(spec, baseline=m.baseline_version, events_from=data.last_event_id(session))
            rollout = Rollout(
                model_id=m.id,
                version=version,
                state=RUNNING,
                reason=None,
                stage=0,
                stage_started_at=now,
                spec=spec.to_json(),
                revision=0,
                created_by=by,
                created_at=now,
                updated_at=now,
            )
            data.create_rollout(session, rollout=rollout)
            stages = " → ".join(f"{plain_number(s.percent)} %" for s in spec.stages)
            base = f"v{spec.baseline}" if spec.baseline is not None else "none"
            detail = f"v{version} in stages {stages}; baseline {base}"
            data.add_history(session, rollout_id=rollout.id, at=now, event="created", stage=0, detail=detail, by=by)
            session.commit()
            rollout_id, model_id, baseline = rollout.id, m.id, m.baseline_version
        self.metrics.rollout_transitions.labels("created").inc()
        if baseline is not None:
            self.deltas.request(model_id, baseline, version)  # most of the cohort runs the baseline
        self.evaluate_once(rollout_id=rollout_id)  # an immediate rollout to an empty cohort completes now
        self.on_change()
        return self.get(rollout_id)

    def act(self, rollout_id: int, action: Action, *, reason: str | None, by: str) -> RolloutView:
        """Pause, resume, abort or advance; :class:`RolloutTransitionError` when the state does not allow it."""
        for _ in range(10):
            with self.db.session() as session:
                r = data.get_rollout(session, rollout_id=rollout_id)
                if r is None:
                    raise RolloutNotFoundError(f"no rollout {rollout_id}")
                decision = plan_action(
                    action,
                    rollout_id=r.id,
                    state=r.state,
                    stage=r.stage,
                    stages=len(r.spec["stages"]),
                    reason=reason,
                    by=by,
                )
                seen = r.revision
            if self._transition(r, seen, decision, by=by):
                break
        else:  # pragma: no cover - ten lost races in a row
            raise RolloutTransitionError(f"rollout {rollout_id} kept changing; try again")
        if action in ("resume", "advance"):
            self.evaluate_once(rollout_id=rollout_id)
        self.on_change()
        return self.get(rollout_id)

    def get(self, rollout_id: int, now: datetime | None = None) -> RolloutView:
        with self.db.session() as session:
            r = data.get_rollout(session, rollout_id=rollout_id)
            if r is None:
                raise RolloutNotFoundError(f"no rollout {rollout_id}")
            return self._describe(session, r, now or utcnow())

    def list_rollouts(self, *, model: str | None, state: str | None, limit: int) -> list[RolloutView]:
        now = utcnow()
        with self.db.session() as session:
            model_id = None
            if model is not None:
                m = registry_data.get_model(session, name=model)
                if m is None:
                    return []
                model_id = m.id
            rows = data.list_rollouts(session, model_id=model_id, state=state, limit=limit)
            return [self._describe(session, r, now) for r in rows]

    # -- the controller -------------------------------------------------------------------------

    def evaluate_once(self, *, rollout_id: int | None = None, now: datetime | None = None) -> list[str]:
        """Judge every active rollout (or one) once; returns the transitions this process made."""
        began = (time.monotonic(), utcnow())  # when these counts began, for the dashboard
        now = now or began[1]
        plans: list[tuple[Rollout, Decision]] = []
        judged: dict[int, RolloutView] = {}
        with self.db.session() as session:
            for active in data.active_rollouts(session):
                r = active.rollout
                if rollout_id is not None and r.id != rollout_id:
                    continue
                if active.revoked:
                    why = f" ({active.revoked_reason})" if active.revoked_reason else ""
                    detail = f"v{r.version} was revoked{why}; nothing more is offered"
                    plans.append((r, Decision("aborted", ABORTED, r.stage, "version_revoked", detail)))
                    continue
                view = self._describe(session, r, now, model=active.model)
                judged[r.id] = view
                if r.state not in OFFERING:
                    continue
                decision = decide(
                    view.spec,
                    state=r.state,
                    stage=r.stage,
                    counts=view.stages[r.stage].counts,
                    gates=view.gates,
                    stage_started_at=r.stage_started_at,
                    now=now,
                )
                if decision is not None:
                    plans.append((r, decision))
        self._keep(judged, began, every=rollout_id is None)
        made = [d.event for r, d in plans if self._transition(r, r.revision, d, by=SYSTEM, now=now)]
        if made and rollout_id is None:
            self.on_change()
        return made

    def judged(self, rollout_id: int, *, max_age: float) -> tuple[datetime, RolloutView] | None:
        """The view of an active rollout as this process last judged it (when, and what), if that
        was at most `max_age` seconds ago: its counts and gates without counting again."""
        with self._lock:
            kept = self._judged.get(rollout_id)
        if kept is None or time.monotonic() - kept[0] > max_age:
            return None
        return kept[1], kept[2]

    def active(self, *, max_age: float) -> list[RolloutView]:
        """Every active rollout's view: as last judged when that is recent enough, else counted now."""
        now = utcnow()
        out = []
        with self.db.session() as session:
            for a in data.active_rollouts(session):
                kept = self.judged(a.rollout.id, max_age=max_age)
                out.append(kept[1] if kept else self._describe(session, a.rollout, now, model=a.model))
        return out

    def _keep(self, judged: dict[int, RolloutView], began: tuple[float, datetime], *, every: bool) -> None:
        """Remember what was judged; after a pass over every active rollout, forget the finished ones."""
        stamp, at = began
        with self._lock:
            if every:
                self._judged = {}
            for rid, view in judged.items():
                self._judged[rid] = (stamp, at, view)

    async def run(self) -> None:
        """Evaluate every `eval_seconds` until cancelled; failures are logged and retried."""
        await refresh_forever(self.evaluate_once, self.eval_seconds, "rollout evaluation", log=log)

    def _transition(self, r: Rollout, seen_revision: int, d: Decision, *, by: str, now: datetime | None = None) -> bool:
        """Compare-and-set the rollout from `seen_revision`; the history row and baseline move with it."""
        now = now or utcnow()
        values: dict[str, Any] = {"state": d.state, "reason": d.reason, "stage": d.stage, "updated_at": now}
        if d.stage != r.stage:
            values["stage_started_at"] = now
        with self.db.session() as session:
            if not data.compare_and_set(session, rollout_id=r.id, seen_revision=seen_revision, values=values):
                session.rollback()
                return False
            data.add_history(session, rollout_id=r.id, at=now, event=d.event, stage=d.stage, detail=d.detail, by=by)
            if d.state == COMPLETED:
                data.set_baseline(session, model_id=r.model_id, version=r.version)
            session.commit()
        self.metrics.rollout_transitions.labels(d.event).inc()
        log.info("rollout %d: %s (%s) by %s", r.id, d.event, d.detail, by)
        return True

    def _buckets_of(self, session: Session, r: Rollout, spec: RolloutSpec, model: str) -> dict[int, int]:
        """Device pk → bucket, for every device of the model that the selector matches."""
        devices = data.model_devices(session, model_name=model, selector=spec.selector)
        with self._lock:
            cache = self._buckets.setdefault(r.id, {})
            if len(self._buckets) > 64:
                del self._buckets[min(self._buckets)]
        buckets = {}
        for pk, device_id in devices:
            b = cache.get(pk)
            if b is None:
                b = cache[pk] = bucket(r.id, device_id)
            buckets[pk] = b
        return buckets

    def _gates(
        self, session: Session, r: Rollout, spec: RolloutSpec, model: str, members: frozenset[int]
    ) -> list[GateResult]:
        """The gates, from the pooled sums and (latency) each member device's own."""
        latency = self.latencies.read(session, r, spec, model, members) if _judges_latency(spec) else {}
        return judge_gates(spec, r.version, data.metric_sums(session, rollout_id=r.id), latency)

    def _describe(self, session: Session, r: Rollout, now: datetime, *, model: str | None = None) -> RolloutView:
        spec = RolloutSpec.from_json(r.spec)
        model = model or data.model_name_of(session, model_id=r.model_id)
        buckets = self._buckets_of(session, r, spec, model)
        counts = count_stages(spec, buckets, data.device_rows(session, rollout_id=r.id), now)
        history = [
            HistoryEntry(at=h.at, event=h.event, stage=h.stage, detail=h.detail, by=h.by)
            for h in data.history(session, rollout_id=r.id)
        ]
        started: dict[int, datetime] = {}
        for h in history:
            if h.event in ("created", "stage_advanced", "advanced"):
                started.setdefault(h.stage, h.at)
        started[r.stage] = started.get(r.stage, r.stage_started_at)
        stages = [
            StageView(
                percent=s.percent,
                soak_seconds=s.soak_seconds,
                state=stage_state(i, stage=r.stage, state=r.state),
                started_at=started.get(i) if i <= r.stage else None,
                counts=counts[i],
            )
            for i, s in enumerate(spec.stages)
        ]
        return RolloutView(
            id=r.id,
            model=model,
            version=r.version,
            state=r.state,
            reason=r.reason,
            stage=r.stage,
            spec=spec,
            created_by=r.created_by,
            created_at=r.created_at,
            updated_at=r.updated_at,
            stages=stages,
            gates=self._gates(session, r, spec, model, frozenset(buckets)),
            history=history,
        )

    # -- device events --------------------------------------------------------------------------

    def record_events(self, session: Session, *, device_pk: int, model: str, events: Sequence[EventLike]) -> None:
        """Fold a device's events into its model's rollouts (in the caller's transaction): see
        :func:`server.core.rollout_events.record_events`."""
        record_events(session, device_pk=device_pk, model=model, events=events)


def _judges_latency(spec: RolloutSpec) -> bool:
    return spec.baseline is not None and any(g.metric == "latency_p95_ratio" for g in spec.gates)
