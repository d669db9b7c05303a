"""What the ops dashboard reads: the fleet per model, rollouts, the registry with sizes and deltas.

Counting a fleet of 100,000 devices (versions, statuses, stale devices, a rollout's stage cohorts)
reads every device; a page load must not pay that. An active rollout's stage counts and gates are
the rollout engine's: it counts them anyway each time it judges the rollout (every
``OTA_ROLLOUT_EVAL_SECONDS``) and keeps the view (:meth:`RolloutService.judged`). The fleet
overview and a finished rollout's view are :class:`Recent` values: computed at most once per
``cache_seconds`` and shared by every request; once older, the old value is still served (up to
``MAX_STALE_SECONDS``) while one background thread counts again — stale-while-revalidate — so
only the fleet's first load after start or after a quiet minute waits for a count (of versions
and statuses; the rollouts in it come from the engine). A rollout's state, stage, reason and
history are read fresh on every load (its row and history: no device is read), so an action
taken from the dashboard shows at once; the action also expires the counts. Each page says when
its numbers were counted. Rollouts are counted by :class:`RolloutService`, the same service the
REST API calls.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from ..data import delta_rows as delta_data
from ..data import devices as device_data
from ..data import registry as registry_data
from ..data import rollouts as rollout_data
from ..db.models import ModelVersion
from ..db.session import Database, Session, utcnow
from .rollout_policy import Counts, RolloutSpec, stage_state
from .rollouts import HistoryEntry, RolloutService, RolloutView
from .view import RegistryView

STALE_POLLS = 3  # a device not seen for this many poll intervals is stale
MAX_STALE_SECONDS = 60.0  # older than this, a page waits for a fresh count instead
MAX_ROLLOUT_VIEWS = 64

log = logging.getLogger("ota.dashboard")
T = TypeVar("T")


@dataclass(frozen=True)
class Counted(Generic[T]):
    value: T
    at: datetime  # when the count began (UTC)


class Recent(Generic[T]):
    """A value recomputed at most once per `fresh` seconds, served stale (≤ `stale` s) while it is recomputed.

    :meth:`expire` (after an action) makes the next read start a recount without waiting for it.
    """

    def __init__(self, compute: Callable[[], T], *, fresh: float, stale: float = MAX_STALE_SECONDS) -> None:
        self.compute = compute
        self.fresh = fresh
        self.stale = stale
        self._value: tuple[float, bool, Counted[T]] | None = None  # (count began, expired, value)
        self._state = threading.Lock()  # guards _value, _refreshing, _expired_at
        self._counting = threading.Lock()  # one count at a time
        self._refreshing = False
        self._expired_at = 0.0  # a count begun before this is stale as soon as it lands

    def get(self) -> Counted[T]:
        with self._state:
            cached = self._value
            if cached is not None:
                born, expired, value = cached
                age = time.monotonic() - born
                if not expired and age < self.fresh:
                    return value
                if age < self.stale:
                    if not self._refreshing:
                        self._refreshing = True
                        threading.Thread(target=self._refresh, name="dashboard-count", daemon=True).start()
                    return value
        with self._counting:  # nothing usable: count now (concurrent callers wait for one count)
            with self._state:
                cached = self._value
                if cached is not None and not cached[1] and time.monotonic() - cached[0] < self.fresh:
                    return cached[2]
            return self._count()

    def expire(self) -> None:
        with self._state:
            self._expired_at = time.monotonic()
            if self._value is not None:
                self._value = (self._value[0], True, self._value[2])

    def _count(self) -> Counted[T]:
        started, at = time.monotonic(), utcnow()
        counted = Counted(self.compute(), at)
        with self._state:
            if self._value is None or self._value[0] < started:
                self._value = (started, started < self._expired_at, counted)
        return counted

    def _refresh(self) -> None:
        try:
            with self._counting:
                self._count()
        except Exception:  # the stale value stays; the next read past `stale` counts in the foreground
            log.exception("dashboard count failed")
        finally:
            with self._state:
                self._refreshing = False


@dataclass
class ModelFleet:
    model: str
    devices: int = 0
    baseline: int | None = None
    versions: list[tuple[int | None, int]] = field(default_factory=list)  # (installed version, devices)
    statuses: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    rollout: RolloutView | None = None

    @property
    def on_baseline(self) -> int:
        return sum(n for v, n in self.versions if v is not None and v == self.baseline)


@dataclass(frozen=True)
class FleetOverview:
    models: list[ModelFleet]
    counted_at: datetime
    stale_after_seconds: int

    @property
    def active(self) -> dict[int, RolloutView]:
        return {m.rollout.id: m.rollout for m in self.models if m.rollout is not None}


@dataclass(frozen=True)
class VersionRow:
    version: ModelVersion
    metrics: dict[str, Any]
    delta_from_previous: tuple[int, str, int | None] | None  # (from version, status, length)


@dataclass(frozen=True)
class ModelRows:
    name: str
    baseline: int | None
    versions: list[VersionRow]


@dataclass(frozen=True)
class RolloutLine:
    """One row of the rollouts list: read from the rollout's row; counts only for active rollouts."""

    id: int
    model: str
    version: int
    state: str
    stage: int
    stages: int
    percent: float
    created_by: str
    updated_at: datetime
    counts: Counts | None  # the current stage's, from the (cached) fleet overview


class Dashboard:
    """Read models for the dashboard pages; blocking, run in a worker thread."""

    def __init__(
        self,
        db: Database,
        view: RegistryView,
        rollouts: RolloutService,
        *,
        poll_interval: int,
        cache_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.view = view
        self.rollouts = rollouts
        self.stale_after = STALE_POLLS * poll_interval
        self.cache_seconds = cache_seconds
        self._fleet: Recent[FleetOverview] = Recent(self._count, fresh=cache_seconds)
        self._rollouts: dict[int, Recent[RolloutView]] = {}
        self._lock = threading.Lock()

    def fleet(self) -> FleetOverview:
        """The overview: counts as recent as the module's docstring says; each rollout's state, stage and
        history as of now (read from its row, cheap), so an action shows at once."""
        overview = self._fleet.get().value
        if not any(m.rollout for m in overview.models):
            return overview
        with self.db.session() as session:
            models = [
                replace(m, rollout=self._current(session, m.rollout) if m.rollout else None) for m in overview.models
            ]
        return replace(overview, models=models)

    def rollout(self, rollout_id: int) -> Counted[RolloutView]:
        """One rollout's view: stage counts and gates recent like the overview, state and history as of now;
        :class:`RolloutNotFoundError` if there is none. An active rollout's counts are the rollout
        engine's, from its last evaluation; only a finished one (or one not judged for a minute) is
        counted here."""
        judged = self.rollouts.judged(rollout_id, max_age=MAX_STALE_SECONDS)
        if judged is not None:
            with self.db.session() as session:
                return Counted(self._current(session, judged[1]), judged[0])
        with self._lock:
            recent = self._rollouts.get(rollout_id)
            if recent is None:
                if len(self._rollouts) >= MAX_ROLLOUT_VIEWS:
                    del self._rollouts[min(self._rollouts)]
                recent = self._rollouts[rollout_id] = Recent(
                    lambda: self.rollouts.get(rollout_id), fresh=self.cache_seconds
                )
        counted = recent.get()
        with self.db.session() as session:
            return replace(counted, value=self._current(session, counted.value))

    def expire(self) -> None:
        """After an action from the dashboard: the next reads start recounting (state shows at once anyway)."""
        self._fleet.expire()
        with self._lock:
            recents = list(self._rollouts.values())
        for recent in recents:
            recent.expire()

    @staticmethod
    def _current(session: Session, view: RolloutView) -> RolloutView:
        """A counted view brought up to date from the rollout's row and history (no device is read)."""
        row = rollout_data.get_rollout(session, rollout_id=view.id)
        if row is None:
            return view
        history = [
            HistoryEntry(at=h.at, event=h.event, stage=h.stage, detail=h.detail, by=h.by)
            for h in rollout_data.history(session, rollout_id=view.id)
        ]
        stages = [replace(s, state=stage_state(i, stage=row.stage, state=row.state)) for i, s in enumerate(view.stages)]
        return replace(
            view,
            state=row.state,
            reason=row.reason,
            stage=row.stage,
            updated_at=row.updated_at,
            stages=stages,
            history=history,
        )

    def _count(self) -> FleetOverview:
        now = utcnow()
        heads = self.view.current().heads
        with self.db.session() as session:
            by_version, by_status = device_data.fleet_counts(session)
            stale = device_data.stale_counts(session, seen_before=now - timedelta(seconds=self.stale_after))
            names = [m.name for m in registry_data.list_models(session)]
        models: dict[str, ModelFleet] = {}

        def entry(name: str) -> ModelFleet:
            if name not in models:
                head = heads.get(name)
                models[name] = ModelFleet(model=name, baseline=head.version if head else None)
            return models[name]

        for name in names:
            entry(name)
        for name, version, count in by_version:
            m = entry(name)
            m.devices += count
            m.versions.append((version, count))
        for name, status, count in by_status:
            entry(name).statuses[status] = count
        for name, count in stale.items():
            entry(name).stale = count
        for r in self.rollouts.active(max_age=MAX_STALE_SECONDS):  # as the rollout engine last counted them
            m = entry(r.model)
            if m.rollout is None or r.id > m.rollout.id:
                m.rollout = r
        return FleetOverview(
            models=[models[k] for k in sorted(models)], counted_at=now, stale_after_seconds=self.stale_after
        )

    def registry(self) -> list[ModelRows]:
        """Every model's versions (newest first) with manifest metrics and the delta from the version below."""
        heads = self.view.current().heads
        out = []
        with self.db.session() as session:
            for summary in registry_data.list_models(session):
                model = registry_data.get_model(session, name=summary.name)
                if model is None:  # deleted between the two reads: nothing to show
                    continue
                rows = registry_data.list_versions(session, model_id=model.id)
                versions = []
                for i, row in enumerate(rows):
                    previous = rows[i + 1].version if i + 1 < len(rows) else None
                    delta = None
                    if previous is not None:
                        for d in delta_data.list_deltas(session, model_id=model.id, to_version=row.version):
                            if d.from_version == previous:
                                delta = (d.from_version, d.status, d.length)
                    metrics = json.loads(row.manifest_bytes).get("metrics") or {}
                    versions.append(VersionRow(row, metrics if isinstance(metrics, dict) else {}, delta))
                head = heads.get(summary.name)
                out.append(ModelRows(summary.name, head.version if head else None, versions))
        return out

    def rollout_lines(self, *, limit: int = 100) -> list[RolloutLine]:
        """Newest first. Counting a stage scans its model's devices, so only active rollouts carry counts,
        and those come from the cached fleet overview (finished rollouts are not counted again)."""
        active = self.fleet().active
        names: dict[int, str] = {}
        out = []
        with self.db.session() as session:
            for r in rollout_data.list_rollouts(session, limit=limit):
                if r.model_id not in names:
                    names[r.model_id] = rollout_data.model_name_of(session, model_id=r.model_id)
                spec = RolloutSpec.from_json(r.spec)
                stage = min(r.stage, len(spec.stages) - 1)
                view = active.get(r.id)
                out.append(
                    RolloutLine(
                        id=r.id,
                        model=names[r.model_id],
                        version=r.version,
                        state=r.state,  # the row is fresher than the cached counts
                        stage=r.stage,
                        stages=len(spec.stages),
                        percent=spec.stages[stage].percent,
                        created_by=r.created_by,
                        updated_at=r.updated_at,
                        counts=view.stages[stage].counts if view else None,
                    )
                )
        return out
