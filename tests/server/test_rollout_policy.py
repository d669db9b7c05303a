"""The rollout policy on its own: verdicts, counting and cohorts as plain arithmetic, no database.

What the controller does with a stage is decided by :func:`decide` from counts, gate results and
the clock; these tests walk its table (halt, advance, wait, complete, keep going) so that a change
to a threshold's comparison or to what "enough data" means shows up here, in milliseconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.rollout_policy import (
    Counts,
    DeviceLatency,
    Gate,
    GateResult,
    RolloutSpec,
    Stage,
    bucket,
    count_stages,
    decide,
    in_stage,
    judge_gates,
    plan_action,
    spec_problem,
)
from server.errors import RolloutTransitionError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = RolloutSpec(
    stages=(Stage(10, 600), Stage(50, 600), Stage(100, 0)),
    min_devices=10,
    success_threshold=0.9,
    failure_threshold=0.1,
    install_timeout_seconds=3600,
)
PASS = GateResult("latency_p95_ratio", 1.0, 1.5, 600, "pass", "")
PENDING = GateResult("latency_p95_ratio", None, 1.5, 20, "pending", "20 of 500 samples")
FAIL = GateResult("latency_p95_ratio", 2.0, 1.5, 600, "fail", "p95 doubled")


@dataclass
class Row:
    """A device's row in a rollout, as the data layer hands it over."""

    device_pk: int
    offered_at: datetime
    installed_at: datetime | None = None
    failed_at: datetime | None = None
    reason: str | None = None


def verdict(
    counts: Counts,
    *,
    spec: RolloutSpec = SPEC,
    stage: int = 0,
    state: str = "running",
    gates: tuple[GateResult, ...] = (),
    soaked: bool = True,
) -> tuple[str, str, int, str | None] | None:
    """(event, state, stage, reason) of the decision, or None: keep going."""
    elapsed = spec.stages[stage].soak_seconds + (0 if soaked else -1)
    d = decide(
        spec,
        state=state,
        stage=stage,
        counts=counts,
        gates=gates,
        stage_started_at=T0,
        now=T0 + timedelta(seconds=elapsed),
    )
    return None if d is None else (d.event, d.state, d.stage, d.reason)


# -- halting -------------------------------------------------------------------------------------


def test_halts_once_enough_devices_decided_and_too_many_failed() -> None:
    assert verdict(Counts(cohort=100, offered=30, installed=8, failed=1)) is None  # 9 decided < 10
    assert verdict(Counts(cohort=100, offered=30, installed=8, failed=2)) == (
        "halted",
        "paused",
        0,
        "failure_threshold",
    )  # 2 of 10 = 20 % > 10 %


def test_failure_rate_at_the_threshold_does_not_halt() -> None:
    assert verdict(Counts(cohort=100, offered=30, installed=18, failed=2), soaked=False) is None  # 10 % is allowed


def test_a_cohort_smaller_than_min_devices_is_judged_once_all_of_it_decided() -> None:
    assert verdict(Counts(cohort=4, offered=4, installed=2, failed=1)) is None  # 3 of 4 decided
    assert verdict(Counts(cohort=4, offered=4, installed=3, failed=1))[:2] == ("halted", "paused")  # type: ignore[index]


def test_halting_does_not_wait_for_the_soak_nor_for_an_operator() -> None:
    failing = Counts(cohort=20, offered=20, installed=5, failed=5)
    assert verdict(failing, soaked=False)[0] == "halted"  # type: ignore[index]
    assert verdict(failing, state="waiting")[0] == "halted"  # type: ignore[index]


def test_a_failing_gate_halts_with_its_metric_as_reason() -> None:
    healthy = Counts(cohort=20, offered=20, installed=20, failed=0)
    assert verdict(healthy, gates=(PASS, FAIL), soaked=False) == ("halted", "paused", 0, "gate:latency_p95_ratio")


def test_install_timeout_counts_as_failure() -> None:
    spec = RolloutSpec(stages=(Stage(100, 0),), min_devices=3, install_timeout_seconds=60)
    rows = [Row(1, T0, installed_at=T0), Row(2, T0), Row(3, T0)]
    buckets = {1: 0, 2: 1, 3: 2}
    (within,) = count_stages(spec, buckets, rows, T0 + timedelta(seconds=59))
    assert (within.installed, within.failed, within.pending) == (1, 0, 2)
    (late,) = count_stages(spec, buckets, rows, T0 + timedelta(seconds=60))
    assert (late.installed, late.failed, late.pending) == (1, 2, 0)
    assert decide(spec, state="running", stage=0, counts=late, gates=(), stage_started_at=T0, now=T0) is not None


def test_a_rollback_after_installing_counts_as_failed_and_a_retry_that_installs_as_installed() -> None:
    later = T0 + timedelta(seconds=30)
    rows = [Row(1, T0, installed_at=T0, failed_at=later), Row(2, T0, installed_at=later, failed_at=T0)]
    (c,) = count_stages(RolloutSpec(stages=(Stage(100, 0),)), {1: 0, 2: 1}, rows, later)
    assert (c.installed, c.failed) == (1, 1)


# -- advancing -----------------------------------------------------------------------------------


def test_device_faults_are_neither_failed_nor_timed_out_until_the_device_installs() -> None:
    spec = RolloutSpec(stages=(Stage(100, 0),), install_timeout_seconds=60)
    later = T0 + timedelta(hours=1)
    rows = [
        Row(1, T0, failed_at=T0, reason="no_space"),
        Row(2, T0, failed_at=T0, reason="read_only"),
        Row(3, T0, failed_at=T0, reason="hash_mismatch"),
        Row(4, T0, installed_at=T0 + timedelta(minutes=5), failed_at=T0, reason="no_space"),  # disk freed, installed
    ]
    (c,) = count_stages(spec, {1: 0, 2: 1, 3: 2, 4: 3}, rows, later)
    assert (c.installed, c.failed, c.device_faults, c.pending, c.decided) == (1, 1, 2, 0, 2)


def test_devices_with_a_device_fault_are_left_out_of_the_verdict() -> None:
    canary = Counts(cohort=5, offered=5, installed=4, failed=0, device_faults=1)
    assert verdict(canary) == ("stage_advanced", "running", 1, None)  # all who can decide did: 4 of 4
    assert verdict(Counts(cohort=5, offered=5, installed=3, failed=1, device_faults=1)) == (
        "halted",
        "paused",
        0,
        "failure_threshold",
    )  # 1 of 4 decided (25 %) failed: the device fault is no excuse for the others
    everyone_faulty = Counts(cohort=5, offered=5, installed=0, failed=0, device_faults=5)
    assert verdict(everyone_faulty) is None  # nobody could decide: missing data never advances


def test_advances_only_with_soak_elapsed_success_and_passing_gates() -> None:
    good = Counts(cohort=20, offered=20, installed=19, failed=1)
    assert verdict(good, gates=(PASS,)) == ("stage_advanced", "running", 1, None)
    assert verdict(good, gates=(PASS,), soaked=False) is None
    assert verdict(good) == verdict(good, gates=(PASS,))  # no gates: nothing to wait for
    assert verdict(Counts(cohort=20, offered=20, installed=8, failed=1), gates=(PASS,)) is None  # 9 < 10 decided


def test_success_rate_below_the_threshold_neither_advances_nor_halts() -> None:
    spec = RolloutSpec(stages=SPEC.stages, min_devices=10, success_threshold=0.95, failure_threshold=0.1)
    assert verdict(Counts(cohort=20, offered=20, installed=18, failed=2), spec=spec) is None  # 90 %: in between


def test_missing_data_never_advances() -> None:
    nobody_polled = Counts(cohort=50, offered=0, installed=0, failed=0)
    assert verdict(nobody_polled) is None
    all_pending = Counts(cohort=50, offered=50, installed=0, failed=0)
    assert verdict(all_pending) is None
    good = Counts(cohort=20, offered=20, installed=20, failed=0)
    assert verdict(good, gates=(PASS, PENDING)) is None  # one gate still below min_samples


def test_waits_for_an_operator_when_auto_advance_is_off() -> None:
    spec = RolloutSpec(stages=SPEC.stages, min_devices=1, auto_advance=False)
    good = Counts(cohort=5, offered=5, installed=5, failed=0)
    assert verdict(good, spec=spec) == ("stage_passed", "waiting", 0, "waiting for an operator to advance")
    assert verdict(good, spec=spec, state="waiting") is None  # already waiting: no second transition


def test_the_last_stage_passing_completes() -> None:
    good = Counts(cohort=100, offered=100, installed=100, failed=0)
    assert verdict(good, stage=2) == ("completed", "completed", 2, None)
    spec = RolloutSpec(stages=SPEC.stages, min_devices=1, auto_advance=False)
    assert verdict(good, spec=spec, stage=2)[0] == "completed"  # type: ignore[index]


def test_an_empty_cohort_passes_at_once() -> None:
    assert verdict(Counts(cohort=0, offered=0, installed=0, failed=0)) == ("stage_advanced", "running", 1, None)


def test_paused_or_finished_rollouts_are_never_moved_by_the_controller() -> None:
    good = Counts(cohort=20, offered=20, installed=20, failed=0)
    for state in ("paused", "completed", "aborted"):
        assert verdict(good, state=state) is None, state


# -- gates ---------------------------------------------------------------------------------------


@dataclass
class Sums:
    samples: int
    p95_sum: float = 0.0
    confidence_sum: float = 0.0
    validation_failures: int = 0


def sums(samples: int, p95: float, confidence: float = 0.9) -> Sums:
    return Sums(samples, p95 * samples, confidence * samples)


def devices(*p95s: float, requests: int = 100, first_pk: int = 1) -> dict[int, DeviceLatency]:
    """Device pk → its sums: one device per p95 given, each with `requests` requests."""
    return {first_pk + i: DeviceLatency(requests, p95 * requests) for i, p95 in enumerate(p95s)}


LATENCY = RolloutSpec(stages=(Stage(100, 0),), gates=(Gate("latency_p95_ratio", 1.5, 500),), baseline=1)
ENOUGH = {2: sums(500, 10.0), 1: sums(500, 10.0)}  # the pooled samples: enough on both versions


def latency_gate(new: dict[int, DeviceLatency], base: dict[int, DeviceLatency]) -> GateResult:
    (g,) = judge_gates(LATENCY, 2, ENOUGH, {2: new, 1: base})
    return g


def test_gate_is_pending_below_min_samples_on_either_version() -> None:
    latency = {2: devices(30.0, first_pk=10), 1: devices(10.0)}
    (g,) = judge_gates(LATENCY, 2, {2: sums(499, 30.0), 1: sums(5000, 10.0)}, latency)
    assert g.status == "pending" and g.value is None and g.samples == 499
    (g,) = judge_gates(LATENCY, 2, {2: sums(500, 30.0), 1: sums(10, 10.0)}, latency)
    assert g.status == "pending" and "baseline" in g.detail
    (g,) = judge_gates(LATENCY, 2, {2: sums(500, 30.0), 1: sums(500, 10.0)}, latency)
    assert g.status == "fail" and g.value == pytest.approx(3.0)
    g = latency_gate(devices(15.0, first_pk=10), devices(10.0))
    assert g.status == "pass" and g.value == pytest.approx(1.5)  # the bound itself passes


def test_one_slow_busy_device_does_not_decide_the_latency_gate() -> None:
    """Pooled by requests, the slow device (10× slower, 100× busier) would make the ratio ~9."""
    new = devices(10.0, 10.0, 10.0, 10.0, first_pk=10) | devices(100.0, requests=10_000, first_pk=20)
    g = latency_gate(new, devices(10.0, 10.0, 10.0))
    assert g.status == "pass" and g.value == pytest.approx(1.0)


def test_a_version_slow_on_every_device_fails_the_latency_gate() -> None:
    g = latency_gate(devices(20.0, 22.0, 18.0, 21.0, first_pk=10), devices(10.0, 11.0, 9.0))
    assert g.status == "fail" and g.value == pytest.approx(2.0, rel=0.1)


def test_a_device_is_compared_with_its_own_baseline_when_it_reported_one() -> None:
    base = devices(40.0, 10.0, 10.0)  # device 1 is slow hardware: 40 ms on the baseline already
    g = latency_gate({1: DeviceLatency(100, 44.0 * 100)}, base)
    assert g.status == "pass" and g.value == pytest.approx(1.1)  # 44 / 40, not 44 / 10 (the fleet's median)
    g = latency_gate({9: DeviceLatency(100, 44.0 * 100)}, base)  # a device with no baseline of its own
    assert g.status == "fail" and g.value == pytest.approx(4.4)


def test_devices_with_too_few_requests_do_not_count_for_latency() -> None:
    g = latency_gate(devices(30.0, requests=4, first_pk=10), devices(10.0))
    assert g.status == "pending" and "no device has served 5 requests on the new version" in g.detail
    g = latency_gate(devices(30.0, requests=4, first_pk=10) | devices(10.0, first_pk=20), devices(10.0))
    assert g.status == "pass" and g.value == pytest.approx(1.0)  # only device 20 counts


def test_a_first_rollout_has_no_baseline_to_compare_with() -> None:
    spec = RolloutSpec(stages=(Stage(100, 0),), gates=(Gate("confidence_delta", -0.05, 1),))
    (g,) = judge_gates(spec, 1, {1: sums(1000, 10.0)}, {})
    assert g.status == "pending" and "first rollout" in g.detail


def test_confidence_delta_is_new_minus_baseline() -> None:
    spec = RolloutSpec(stages=(Stage(100, 0),), gates=(Gate("confidence_delta", -0.05, 100),), baseline=1)
    (g,) = judge_gates(spec, 2, {2: sums(100, 10.0, 0.80), 1: sums(100, 10.0, 0.90)}, {})
    assert g.status == "fail" and g.value == pytest.approx(-0.1)


def test_one_golden_set_refusal_fails_the_validation_gate_before_any_samples() -> None:
    spec = RolloutSpec(stages=(Stage(100, 0),), gates=(Gate("validation_failures", 0, 500),), baseline=1)
    (g,) = judge_gates(spec, 2, {}, {})
    assert g.status == "pending"
    (g,) = judge_gates(spec, 2, {2: Sums(0, validation_failures=1)}, {})
    assert g.status == "fail" and g.value == 1


# -- the specification and admin actions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("percents", "metrics", "problem"),
    [
        ([5, 25, 100], ["latency_p95_ratio", "confidence_delta"], None),
        ([100], [], None),
        ([], [], "at least one stage"),
        ([50, 50, 100], [], "strictly increase"),
        ([50, 20, 100], [], "strictly increase"),
        ([5, 50], [], "must be 100"),
        ([100], ["validation_failures", "validation_failures"], "once"),
    ],
)
def test_spec_rules(percents: list[float], metrics: list[str], problem: str | None) -> None:
    said = spec_problem(percents, metrics)
    assert (said is None) if problem is None else (said is not None and problem in said)


def test_the_spec_survives_its_json_form() -> None:
    spec = RolloutSpec(
        stages=(Stage(2.5, 60), Stage(100, 0)),
        selector={"site": "north"},
        gates=(Gate("latency_p95_ratio", 1.5, 500), Gate("confidence_delta", -0.05, 500)),
        baseline=3,
    )
    doc: dict[str, Any] = spec.to_json()
    assert doc["gates"][1] == {"metric": "confidence_delta", "min": -0.05, "min_samples": 500}
    assert RolloutSpec.from_json(doc) == spec


def test_admin_actions_allowed_and_refused_by_state() -> None:
    def act(action: Any, state: str, stage: int = 0) -> tuple[str, str, int]:
        d = plan_action(action, rollout_id=7, state=state, stage=stage, stages=3, reason=None, by="ops")
        return d.event, d.state, d.stage

    assert act("pause", "running") == ("paused", "paused", 0)
    assert act("resume", "paused", 1) == ("resumed", "running", 1)
    assert act("advance", "waiting", 1) == ("advanced", "running", 2)
    assert act("advance", "paused", 2) == ("completed", "completed", 2)
    assert act("abort", "paused", 1) == ("aborted", "aborted", 1)
    for action, state in [("pause", "paused"), ("resume", "running"), ("resume", "waiting")] + [
        (a, s) for a in ("pause", "resume", "abort", "advance") for s in ("completed", "aborted")
    ]:
        with pytest.raises(RolloutTransitionError):
            act(action, state)


# -- cohorts -------------------------------------------------------------------------------------


def test_bucket_is_the_documented_hash() -> None:
    expected = int(hashlib.sha256(b"7:cam-01").hexdigest()[:8], 16) % 10000
    assert bucket(7, "cam-01") == expected


device_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._:", min_size=1, max_size=40)
percents = st.floats(min_value=0.01, max_value=100, allow_nan=False)


@given(st.integers(min_value=1, max_value=2**31 - 1), device_ids, percents, percents)
def test_a_device_in_a_stage_stays_in_every_larger_one(rollout_id: int, device_id: str, p: float, q: float) -> None:
    low, high = sorted((p, q))
    b = bucket(rollout_id, device_id)
    assert 0 <= b < 10000
    if in_stage(b, low):
        assert in_stage(b, high)
    assert in_stage(b, 100)


@given(st.lists(device_ids, min_size=1, max_size=30, unique=True), st.lists(percents, min_size=2, max_size=5))
def test_cohort_counts_never_shrink_as_stages_grow(devices: list[str], stage_percents: list[float]) -> None:
    ordered = sorted(set(stage_percents))
    spec = RolloutSpec(stages=tuple(Stage(p, 0) for p in ordered))
    buckets = {pk: bucket(3, d) for pk, d in enumerate(devices)}
    cohorts = [c.cohort for c in count_stages(spec, buckets, [], T0)]
    assert cohorts == sorted(cohorts)
