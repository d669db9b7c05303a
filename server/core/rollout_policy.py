"""The rollout policy: cohorts, the specification, counting, gates and verdicts — pure, no I/O.

Everything here is arithmetic on values handed in (ids, rows already read, running sums, the
time), so that it is judged the same in every server process and tested without a database.
:mod:`server.core.rollouts` reads the rows, calls these functions and applies what they decide.

- **Cohorts** (:func:`bucket`): ``sha256("{rollout_id}:{device_id}")[:8] % 10000``; a device is in
  stage k when its bucket is below ``percent_k × 100``. Pure arithmetic on ids, so every process
  agrees, raising a percentage only adds devices, and a device that enrolls later falls in or out
  by the same rule. A selector (labels that must all match) narrows the fleet first.
- **The specification** (:class:`RolloutSpec`, :func:`spec_problem`): what the operator asked for,
  stored as JSON with the rollout; the rules the API's schema enforces on it.
- **Counting** (:func:`count_stages`): per stage cohort: offered, installed, failed (a
  ``failed``/``rolled_back`` event, or no install within the timeout), device faults (a
  ``failed`` whose reason is the device's own, :data:`DEVICE_FAULTS`: neither failed nor timed
  out), pending, not reached. Rates use decided devices only (installed + failed).
- **Gates** (:func:`judge_gates`): from the per-version running sums of the agents' metrics;
  latency per device (:func:`latency_p95_ratio`), so that one slow device cannot decide alone.
- **Verdicts** (:func:`decide`, :func:`plan_action`): halt, advance (or wait), complete — missing
  data never advances; an admin's action as the transition it asks for.
"""

from __future__ import annotations

import hashlib
import itertools
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from ..errors import RolloutTransitionError

RUNNING, WAITING, PAUSED, COMPLETED, ABORTED = "running", "waiting", "paused", "completed", "aborted"
OFFERING = (RUNNING, WAITING)  # paused, aborted and completed rollouts offer nothing new
VALIDATION_FAILED = "validation_failed"  # the agent's reason code for a golden-set refusal (device_agent.policy)
# The agent's reasons for a `failed` it sends when the *device* cannot install now (device_agent.machine
# `_report_once`): a full disk, a read-only model directory. They say nothing about the version.
DEVICE_FAULTS = frozenset({"no_space", "read_only"})
GATE_BOUNDS = {"latency_p95_ratio": "max", "confidence_delta": "min", "validation_failures": "max"}
Action = Literal["pause", "resume", "abort", "advance"]
DEVICE_MIN_REQUESTS = 5  # a device's p95 on a version counts once it served this many requests (or min_samples)


# -- the specification --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    percent: float
    soak_seconds: int


@dataclass(frozen=True, slots=True)
class Gate:
    metric: str
    threshold: float
    min_samples: int

    @property
    def bound(self) -> str:
        return GATE_BOUNDS[self.metric]


@dataclass(frozen=True)
class RolloutSpec:
    """What the operator asked for (validated by the API schema), plus the baseline it is judged against."""

    stages: tuple[Stage, ...]
    selector: Mapping[str, str] = field(default_factory=dict)
    min_devices: int = 10
    success_threshold: float = 0.95
    failure_threshold: float = 0.05
    install_timeout_seconds: int = 3600
    auto_advance: bool = True
    gates: tuple[Gate, ...] = ()
    baseline: int | None = None  # the model's baseline when the rollout was created
    events_from: int = 0  # the device event log's last id when the rollout was created (its metrics come after)

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": [{"percent": plain_number(s.percent), "soak_seconds": s.soak_seconds} for s in self.stages],
            "selector": dict(self.selector),
            "min_devices": self.min_devices,
            "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold,
            "install_timeout_seconds": self.install_timeout_seconds,
            "auto_advance": self.auto_advance,
            "gates": [{"metric": g.metric, g.bound: g.threshold, "min_samples": g.min_samples} for g in self.gates],
            "baseline": self.baseline,
            "events_from": self.events_from,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RolloutSpec:
        return cls(
            stages=tuple(Stage(float(s["percent"]), int(s["soak_seconds"])) for s in doc["stages"]),
            selector=dict(doc.get("selector") or {}),
            min_devices=int(doc["min_devices"]),
            success_threshold=float(doc["success_threshold"]),
            failure_threshold=float(doc["failure_threshold"]),
            install_timeout_seconds=int(doc["install_timeout_seconds"]),
            auto_advance=bool(doc["auto_advance"]),
            gates=tuple(
                Gate(g["metric"], float(g[GATE_BOUNDS[g["metric"]]]), int(g["min_samples"])) for g in doc["gates"]
            ),
            baseline=doc.get("baseline"),
            events_from=int(doc.get("events_from") or 0),
        )


def plain_number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def spec_problem(percents: Sequence[float], metrics: Sequence[str]) -> str | None:
    """Why these stages and gates cannot make a rollout (the API answers 422 with it), or None.

    Percents are cumulative shares of the selected fleet, so they must strictly increase (a stage
    that adds nobody would soak for nothing) and end at 100 (a rollout that never reaches every
    device would never complete); each gate metric is judged once.
    """
    if not percents:
        return "a rollout needs at least one stage"
    if any(b <= a for a, b in itertools.pairwise(percents)):
        return f"stage percents must strictly increase, got {[plain_number(p) for p in percents]}"
    if percents[-1] != 100:
        return f"the last stage must be 100 %, got {plain_number(percents[-1])}"
    if len(set(metrics)) != len(metrics):
        return "each gate metric may appear once"
    return None


# -- cohorts ------------------------------------------------------------------------------------


def bucket(rollout_id: int, device_id: str) -> int:
    """The device's place in this rollout, 0…9999 (DESIGN.md's rule, exactly)."""
    return int(hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()[:8], 16) % 10000


def in_stage(bucket_value: int, percent: float) -> bool:
    return bucket_value < percent * 100


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- counting, gates, verdicts ------------------------------------------------------------------


class OfferRow(Protocol):
    """A device's row in a rollout (what :func:`count_stages` reads of it)."""

    @property
    def device_pk(self) -> int: ...
    @property
    def offered_at(self) -> datetime: ...
    @property
    def installed_at(self) -> datetime | None: ...
    @property
    def failed_at(self) -> datetime | None: ...
    @property
    def reason(self) -> str | None: ...


class MetricSums(Protocol):
    """One version's running sums of the agents' metrics within a rollout (request-weighted)."""

    @property
    def samples(self) -> int: ...
    @property
    def p95_sum(self) -> float: ...
    @property
    def confidence_sum(self) -> float: ...
    @property
    def validation_failures(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Counts:
    cohort: int
    offered: int
    installed: int
    failed: int
    device_faults: int = 0  # reported they cannot install now (DEVICE_FAULTS): not decided, not failed

    @property
    def pending(self) -> int:
        return self.offered - self.installed - self.failed - self.device_faults

    @property
    def not_reached(self) -> int:
        return self.cohort - self.offered

    @property
    def decided(self) -> int:
        return self.installed + self.failed


def count_stages(
    spec: RolloutSpec, buckets: Mapping[int, int], rows: Iterable[OfferRow], now: datetime
) -> list[Counts]:
    """Counts per stage cohort. `buckets`: device pk → bucket for the selector's devices; cohorts nest."""
    timeout = timedelta(seconds=spec.install_timeout_seconds)
    by_pk = {r.device_pk: r for r in rows}
    out = []
    for stage in spec.stages:
        cohort = offered = installed = failed = faults = 0
        for pk, b in buckets.items():
            if not in_stage(b, stage.percent):
                continue
            cohort += 1
            row = by_pk.get(pk)
            if row is None:
                continue
            offered += 1
            if row.failed_at is not None and (row.installed_at is None or row.failed_at >= row.installed_at):
                if row.reason in DEVICE_FAULTS:
                    faults += 1  # cannot install now (full disk, read-only): the version is not to blame
                else:
                    failed += 1  # refused it, or rolled back from it after installing: no longer runs it
            elif row.installed_at is not None:
                installed += 1  # (a retry that installed after an earlier failure counts as installed)
            elif row.offered_at + timeout <= now:
                failed += 1
        out.append(Counts(cohort, offered, installed, failed, faults))
    return out


@dataclass(frozen=True, slots=True)
class GateResult:
    metric: str
    value: float | None
    threshold: float
    samples: int
    status: Literal["pass", "fail", "pending"]
    detail: str


@dataclass(frozen=True, slots=True)
class DeviceLatency:
    """One device's running sums on one version within a rollout (its metrics windows, request-weighted)."""

    requests: int
    p95_sum: float  # Σ p95_ms × requests

    @property
    def p95(self) -> float:
        return self.p95_sum / self.requests if self.requests > 0 else 0.0


def latency_p95_ratio(
    new: Mapping[int, DeviceLatency], base: Mapping[int, DeviceLatency], *, min_requests: int
) -> tuple[float, str] | str:
    """The median over devices of (the device's p95 on the new version ÷ its reference), with a detail;
    or, while it cannot be judged, why not.

    The reference is the device's own p95 on the baseline when it served enough requests there too
    (before it installed: the same hardware), else the median p95 of the baseline's devices. Only
    devices with `min_requests` requests on a version count on that side. Pooling every request
    instead would let one slow, busy device decide for the fleet; here it moves the median by one
    place, while a version slow on every device moves every ratio.
    """
    on_new = {pk: d.p95 for pk, d in new.items() if d.requests >= min_requests and d.p95 > 0}
    on_base = {pk: d.p95 for pk, d in base.items() if d.requests >= min_requests and d.p95 > 0}
    if not on_new:
        return f"no device has served {min_requests} requests on the new version yet"
    if not on_base:
        return f"no device has served {min_requests} requests on the baseline yet"
    fleet = statistics.median(on_base.values())
    ratios = [p95 / on_base.get(pk, fleet) for pk, p95 in on_new.items()]
    own = sum(pk in on_base for pk in on_new)
    detail = (
        f"median of {len(ratios)} devices' p95 ratios ({own} against their own baseline p95, the rest "
        f"against the baseline devices' median {fleet:.3f} ms)"
    )
    return statistics.median(ratios), detail


def _mean(m: MetricSums | None, total: Callable[[MetricSums], float]) -> float | None:
    if m is None or m.samples <= 0:
        return None
    return total(m) / m.samples


def judge_gates(
    spec: RolloutSpec,
    version: int,
    sums: Mapping[int, MetricSums],
    latency: Mapping[int, Mapping[int, DeviceLatency]],
) -> list[GateResult]:
    """Each gate against the running sums of the new version and the baseline (over the selector).

    `latency`: version → device pk → that device's sums, for the selector's devices (the latency
    gate compares per device; the others read the pooled `sums`).
    """
    new, base = sums.get(version), sums.get(spec.baseline) if spec.baseline is not None else None
    samples = new.samples if new is not None else 0
    out = []
    for g in spec.gates:
        if g.metric == "validation_failures":
            count = new.validation_failures if new is not None else 0
            if count > g.threshold:
                out.append(GateResult(g.metric, count, g.threshold, samples, "fail", f"{count} golden-set refusals"))
            elif samples < g.min_samples:
                out.append(_pending(g, count, samples, f"{samples} of {g.min_samples} samples on v{version}"))
            else:
                out.append(GateResult(g.metric, count, g.threshold, samples, "pass", f"{count} golden-set refusals"))
            continue
        if samples == 0 or samples < g.min_samples:
            out.append(_pending(g, None, samples, f"{samples} of {max(1, g.min_samples)} samples on v{version}"))
            continue
        if spec.baseline is None:
            out.append(_pending(g, None, samples, "no baseline version to compare with (the model's first rollout)"))
            continue
        base_samples = base.samples if base is not None else 0
        if base_samples == 0 or base_samples < g.min_samples:
            needed = max(1, g.min_samples)
            detail = f"no baseline version metrics yet: {base_samples} of {needed} samples on v{spec.baseline}"
            out.append(_pending(g, None, samples, detail))
            continue
        if g.metric == "latency_p95_ratio":
            min_requests = max(1, min(DEVICE_MIN_REQUESTS, g.min_samples))
            judged = latency_p95_ratio(
                latency.get(version, {}), latency.get(spec.baseline, {}), min_requests=min_requests
            )
            if isinstance(judged, str):
                out.append(_pending(g, None, samples, judged))
                continue
            value, detail = judged
            detail = f"v{version} vs v{spec.baseline}: {detail}"
        else:
            new_c, base_c = _mean(new, lambda m: m.confidence_sum), _mean(base, lambda m: m.confidence_sum)
            assert new_c is not None and base_c is not None  # both have samples
            value = new_c - base_c
            detail = f"mean confidence {new_c:.4f} on v{version} vs {base_c:.4f} on v{spec.baseline}"
        ok = value <= g.threshold if g.bound == "max" else value >= g.threshold
        out.append(GateResult(g.metric, round(value, 4), g.threshold, samples, "pass" if ok else "fail", detail))
    return out


def _pending(g: Gate, value: float | None, samples: int, detail: str) -> GateResult:
    return GateResult(g.metric, value, g.threshold, samples, "pending", detail)


@dataclass(frozen=True, slots=True)
class Decision:
    event: str  # the history event: halted, stage_advanced, stage_passed, completed, aborted
    state: str
    stage: int
    reason: str | None
    detail: str


def decide(
    spec: RolloutSpec,
    *,
    state: str,
    stage: int,
    counts: Counts,
    gates: Sequence[GateResult],
    stage_started_at: datetime,
    now: datetime,
) -> Decision | None:
    """The controller's verdict on a running (or waiting) rollout's current stage, or None: keep going.

    Halting is judged in `waiting` too (a bad canary stops even while it waits for an operator);
    advancing only in `running`. A cohort smaller than `min_devices` is judged once all of it has
    decided — otherwise a small fleet could neither halt nor advance. Devices that reported a
    device fault cannot decide, so they are left out of "all of it"; yet a cohort in which every
    device has one decides nothing, and waits.
    """
    able = counts.cohort - counts.device_faults
    required = min(spec.min_devices, able if able > 0 or counts.cohort == 0 else 1)
    decided = counts.decided
    where = f"stage {stage + 1} of {len(spec.stages)} ({plain_number(spec.stages[stage].percent)} %)"
    if decided > 0 and decided >= required and counts.failed / decided > spec.failure_threshold:
        detail = (
            f"{counts.failed} of {decided} decided devices failed ({counts.failed / decided:.1%} > "
            f"{spec.failure_threshold:.1%}) in {where}"
        )
        return Decision("halted", PAUSED, stage, "failure_threshold", detail)
    for g in gates:
        if g.status == "fail":
            bound = "≤" if GATE_BOUNDS[g.metric] == "max" else "≥"
            detail = (
                f"{g.metric} = {g.value} must be {bound} {g.threshold} ({g.detail}; {g.samples} samples) in {where}"
            )
            return Decision("halted", PAUSED, stage, f"gate:{g.metric}", detail)
    if state != RUNNING:
        return None
    soak_end = stage_started_at + timedelta(seconds=spec.stages[stage].soak_seconds)
    if now < soak_end or decided < required:
        return None
    if decided > 0 and counts.installed / decided < spec.success_threshold:
        return None
    if any(g.status != "pass" for g in gates):
        return None
    summary = f"{where} passed: {counts.installed} installed, {counts.failed} failed of {counts.cohort}"
    if counts.device_faults:
        summary += f" ({counts.device_faults} with a device fault: full disk or read-only)"
    if stage == len(spec.stages) - 1:
        return Decision("completed", COMPLETED, stage, None, summary)
    if spec.auto_advance:
        return Decision("stage_advanced", RUNNING, stage + 1, None, summary)
    return Decision("stage_passed", WAITING, stage, "waiting for an operator to advance", summary)


def plan_action(
    action: Action, *, rollout_id: int, state: str, stage: int, stages: int, reason: str | None, by: str
) -> Decision:
    """An admin's pause/resume/abort/advance of a rollout in `state` at `stage` (of `stages`) as a
    transition, or :class:`RolloutTransitionError` when the state does not allow it."""
    said = f": {reason}" if reason else ""
    if state in (COMPLETED, ABORTED):
        raise RolloutTransitionError(f"rollout {rollout_id} is {state}; it cannot {action} any more")
    if action == "pause":
        if state == PAUSED:
            raise RolloutTransitionError(f"rollout {rollout_id} is already paused")
        return Decision("paused", PAUSED, stage, reason or f"paused by {by}", f"paused by {by}{said}")
    if action == "resume":
        if state != PAUSED:
            raise RolloutTransitionError(f"rollout {rollout_id} is {state}, not paused; only a paused rollout resumes")
        return Decision("resumed", RUNNING, stage, None, f"resumed by {by}{said}")
    if action == "abort":
        return Decision("aborted", ABORTED, stage, reason or f"aborted by {by}", f"aborted by {by}{said}")
    if stage == stages - 1:
        return Decision("completed", COMPLETED, stage, None, f"completed by {by} (manual advance){said}")
    return Decision("advanced", RUNNING, stage + 1, None, f"advanced to stage {stage + 2} by {by}{said}")


def stage_state(i: int, *, stage: int, state: str) -> str:
    """How stage `i` reads in a rollout at `stage` in `state`: passed, running, paused, aborted, not_started."""
    if i < stage:
        return "passed"
    if i > stage:
        return "not_started"
    return {RUNNING: "running", WAITING: "passed", PAUSED: "paused", COMPLETED: "passed"}.get(state, "aborted")
