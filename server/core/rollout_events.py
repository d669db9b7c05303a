"""Staged rollouts: a device's events folded into the rollouts they are about (installs, failures, metrics).

Called by :class:`server.core.fleet.Fleet` in the transaction that stores the events
(:meth:`server.core.rollouts.RolloutService.record_events`). The counts and gates read what this
writes: ``rollout_devices`` (installed, failed and why) and the pooled sums in ``rollout_metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..data import rollouts as data
from ..data.rollouts import Session
from ..db.session import utcnow
from .rollout_policy import DEVICE_FAULTS, VALIDATION_FAILED, RolloutSpec, selector_matches

__all__ = ["EventLike", "record_events"]


class EventLike(Protocol):
    """The fields of a device event this module reads (the API's `Event` has them)."""

    @property
    def type(self) -> str: ...
    @property
    def version(self) -> int | None: ...
    @property
    def from_version(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def metrics(self) -> dict[str, float] | None: ...


def record_events(session: Session, *, device_pk: int, model: str, events: Sequence[EventLike]) -> None:
    """Fold a device's events into its model's rollouts (in the caller's transaction).

    `installed` of a rollout's version marks the device installed, `failed` or `rolled_back`
    away from it marks it failed (a golden-set refusal also counts for `validation_failures`;
    a device fault — full disk, read-only directory — is kept apart and counts for nothing):
    in the active rollout, and also in a completed one, so that its counts show the fleet
    converging after the version became the baseline. `metrics` of the active rollout's
    version or of its baseline, from a device its selector matches, add to that version's sums.
    """
    now = utcnow()
    for e in events:
        if e.type == "installed" and e.version is not None:
            r = data.rollout_of_version(session, model_name=model, version=e.version)
            if r is not None:
                data.mark_installed(session, rollout_id=r.id, device_pk=device_pk, stage=r.stage, at=now)
        elif e.type in ("failed", "rolled_back"):
            about = e.from_version if e.type == "rolled_back" and e.from_version is not None else e.version
            r = data.rollout_of_version(session, model_name=model, version=about) if about else None
            if r is None:
                continue
            first = data.mark_failed(
                session,
                rollout_id=r.id,
                device_pk=device_pk,
                stage=r.stage,
                at=now,
                reason=e.reason,
                replaces=DEVICE_FAULTS,  # the device's own fault passed; what it reports now counts
            )
            if first and e.reason == VALIDATION_FAILED:
                data.add_metrics(session, rollout_id=r.id, version=r.version, validation_failures=1)
    samples = [e for e in events if e.type == "metrics" and e.version is not None and e.metrics]
    if samples:
        _record_metrics(session, device_pk=device_pk, model=model, events=samples)


def _record_metrics(session: Session, *, device_pk: int, model: str, events: Sequence[EventLike]) -> None:
    active = data.active_for_model(session, model_name=model)
    if active is None:
        return
    r = active.rollout
    spec = RolloutSpec.from_json(r.spec)
    if spec.selector and not selector_matches(spec.selector, data.device_labels(session, device_pk=device_pk)):
        return
    for e in events:
        m = e.metrics or {}
        requests = int(m.get("requests", 0))
        if e.version not in (r.version, spec.baseline) or e.version is None:
            continue
        if requests <= 0 or not {"p50_ms", "p95_ms", "mean_confidence"} <= m.keys():
            continue
        data.add_metrics(
            session,
            rollout_id=r.id,
            version=e.version,
            samples=requests,
            p50_sum=m["p50_ms"] * requests,
            p95_sum=m["p95_ms"] * requests,
            confidence_sum=m["mean_confidence"] * requests,
        )
