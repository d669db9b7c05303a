"""Start a staged rollout of a published version: `POST /v1/rollouts` (DESIGN.md, "Rollouts").

Publishing makes a version available; a rollout is what offers it to devices. `model-builder
publish --rollout 5,25,100 --soak 600 --gate 'latency_p95_ratio<=1.5'` uploads, then calls
:func:`create_rollout`. The flags are parsed here, strictly and before any upload, so that a typo
cannot leave a version uploaded with no rollout; the server's refusals come back as one sentence.

Creating a rollout is not idempotent (a second one for the model is a 409), so only a connection
that never reached the server is retried; any other failure says that the rollout may exist.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from model_builder.errors import PublishError, RolloutSpecError
from model_builder.publish import problem_detail

# metric → the bound it takes: latency and refusals have a ceiling, confidence a floor.
GATES = {"latency_p95_ratio": "max", "confidence_delta": "min", "validation_failures": "max"}
DEFAULT_SOAK = 600
GATE_FORM = "METRIC<=VALUE or METRIC>=VALUE[@MIN_SAMPLES], e.g. latency_p95_ratio<=1.5@500"


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RolloutSpecError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise RolloutSpecError(f"{what} must be a finite number, got {text!r}")
    return value


def _plain(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def parse_stages(text: str) -> tuple[int | float, ...]:
    """`5,25,100` → the stages' percents: each in (0, 100], strictly increasing, the last 100."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise RolloutSpecError(f"--rollout takes percents separated by commas, like 5,25,100; got {text!r}")
    percents = [_number(p.removesuffix("%"), "a --rollout percent") for p in parts]
    for p in percents:
        if not 0 < p <= 100:
            raise RolloutSpecError(f"a --rollout percent must be above 0 and at most 100, got {_plain(p)}")
    for a, b in itertools.pairwise(percents):
        if b <= a:
            raise RolloutSpecError(f"--rollout percents must increase: {_plain(b)} comes after {_plain(a)}")
    if percents[-1] != 100:
        raise RolloutSpecError(f"the last --rollout stage must be 100 (every device), got {_plain(percents[-1])}")
    return tuple(_plain(p) for p in percents)


def parse_gate(text: str) -> dict[str, Any]:
    """`latency_p95_ratio<=1.5@500` → `{"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 500}`."""
    spec, at, samples = text.strip().partition("@")
    if "<=" in spec:
        (metric, value), bound = spec.split("<=", 1), "max"
    elif ">=" in spec:
        (metric, value), bound = spec.split(">=", 1), "min"
    else:
        raise RolloutSpecError(f"a --gate reads {GATE_FORM}; got {text!r}")
    metric = metric.strip()
    if metric not in GATES:
        raise RolloutSpecError(f"unknown --gate metric {metric!r}; the metrics are {', '.join(GATES)}")
    if GATES[metric] != bound:
        need = "<=" if GATES[metric] == "max" else ">="
        kind = "an upper" if need == "<=" else "a lower"
        raise RolloutSpecError(f"{metric} takes {kind} bound: write {metric}{need}{value.strip() or 'VALUE'}")
    gate: dict[str, Any] = {"metric": metric, bound: _plain(_number(value.strip(), f"the bound of {metric}"))}
    if at:
        if not samples.strip().isdigit() or int(samples) < 1:
            raise RolloutSpecError(f"the @min_samples of a --gate must be a whole number above 0, got {samples!r}")
        gate["min_samples"] = int(samples)
    return gate


def parse_selector(text: str) -> tuple[str, str]:
    """`site=north` → `("site", "north")`: devices whose label `site` is `north`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise RolloutSpecError(f"a --selector reads LABEL=VALUE, e.g. site=north; got {text!r}")
    return key.strip(), value.strip()


@dataclass(frozen=True)
class RolloutPlan:
    """What `--rollout` and its companions ask for; the rest is the server's defaults."""

    percents: Sequence[int | float]
    soak_seconds: int = DEFAULT_SOAK
    gates: Sequence[Mapping[str, Any]] = ()
    selector: Mapping[str, str] = field(default_factory=dict)
    min_devices: int | None = None
    auto_advance: bool = True

    def body(self, model: str, version: int) -> dict[str, Any]:
        """The `POST /v1/rollouts` body: every stage but the last soaks, the last is the end."""
        last = len(self.percents) - 1
        body: dict[str, Any] = {
            "model": model,
            "version": version,
            "selector": dict(self.selector),
            "stages": [
                {"percent": p, "soak_seconds": 0 if i == last else self.soak_seconds}
                for i, p in enumerate(self.percents)
            ],
            "gates": [dict(g) for g in self.gates],
            "auto_advance": self.auto_advance,
        }
        if self.min_devices is not None:
            body["min_devices"] = self.min_devices
        return body


@dataclass(frozen=True)
class RolloutResult:
    id: object
    state: str
    message: str
    body: dict[str, Any]


def _refusal(status: int, model: str, version: int, detail: str) -> str:
    return {
        401: f"the server did not accept the token: {detail}",
        403: f"this token may not start rollouts: {detail}",
        404: f"the server has no rollouts API (HTTP 404, {detail}); it may be older than this builder",
        409: f"v{version} of {model} cannot be rolled out: {detail}",
        422: f"the server found the rollout invalid: {detail}",
    }.get(
        status,
        f"the server answered {status}: {detail}" + ("; see GET /v1/rollouts?model=" + model if status >= 500 else ""),
    )


def describe(plan: RolloutPlan, answer: Mapping[str, Any]) -> str:
    """`rollout 7: running, stages 5% → 25% → 100%, soak 600 s, gates latency_p95_ratio<=1.5`."""
    stages = " → ".join(f"{p}%" for p in plan.percents)
    parts = [f"rollout {answer.get('id')}: {answer.get('state')}", f"stages {stages}"]
    if len(plan.percents) > 1:
        parts.append(f"soak {plan.soak_seconds} s")
    if plan.gates:
        parts.append(
            "gates "
            + " ".join(
                f"{g['metric']}{'<=' if 'max' in g else '>='}{g.get('max', g.get('min'))}"
                + (f"@{g['min_samples']}" if "min_samples" in g else "")
                for g in plan.gates
            )
        )
    if not plan.auto_advance:
        parts.append("each stage waits for `advance`")
    return ", ".join(parts)


def create_rollout(
    server: str,
    token: str,
    model: str,
    version: int,
    plan: RolloutPlan,
    *,
    retries: int = 4,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """`POST /v1/rollouts`; raises :class:`PublishError` with one plain sentence unless it was created."""
    url = f"{server.rstrip('/')}/v1/rollouts"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=timeout, transport=transport) as client:
        for attempt in range(retries + 1):
            try:
                response = client.post(url, json=plan.body(model, version), headers=headers)
            except httpx.ConnectError as e:  # never reached the server: nothing was created, safe to retry
                if attempt == retries:
                    raise PublishError(f"cannot reach {server}: {e}") from e
                sleep(min(10.0, 0.5 * 2**attempt) * (0.5 + random.random()))
                continue
            except httpx.TransportError as e:
                raise PublishError(
                    f"lost the connection to {server} ({e}); the rollout may have been created: "
                    f"see GET /v1/rollouts?model={model}"
                ) from e
            if response.status_code in (200, 201):
                try:
                    answer = response.json()
                except json.JSONDecodeError:
                    answer = None
                if not isinstance(answer, dict):
                    raise PublishError("the server created the rollout but its answer is not a JSON object")
                return RolloutResult(answer.get("id"), str(answer.get("state")), describe(plan, answer), answer)
            raise PublishError(_refusal(response.status_code, model, version, problem_detail(response)))
    raise AssertionError("unreachable")
