"""Rollout endpoints (admin): create, list, inspect, pause / resume / abort / advance.

The policy lives in :mod:`server.core.rollouts`; these routes translate bodies into a
:class:`RolloutSpec`, call the service (which owns its transactions) and render its views.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse

from ...core.rollouts import Action, Gate, RolloutService, RolloutSpec, RolloutView, Stage
from .. import schemas
from ..deps import AdminDep, AuthFirstRoute, ServicesDep

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"], route_class=AuthFirstRoute)
RolloutIdPath = Annotated[int, Path(ge=1, le=schemas.MAX_INT)]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.Problem, "content": {"application/problem+json": {}}} for s in (401, 403, 404)
}


def spec_of(body: schemas.RolloutCreate) -> RolloutSpec:
    return RolloutSpec(
        stages=tuple(Stage(s.percent, s.soak_seconds) for s in body.stages),
        selector=dict(body.selector),
        min_devices=body.min_devices,
        success_threshold=body.success_threshold,
        failure_threshold=body.failure_threshold,
        install_timeout_seconds=body.install_timeout_seconds,
        auto_advance=body.auto_advance,
        gates=tuple(Gate(g.metric, g.max if g.max is not None else g.min or 0.0, g.min_samples) for g in body.gates),
    )


def rollout_out(v: RolloutView) -> schemas.RolloutOut:
    return schemas.RolloutOut(
        id=v.id,
        model=v.model,
        version=v.version,
        baseline_version=v.spec.baseline,
        state=v.state,
        reason=v.reason,
        stage=v.stage,
        selector=dict(v.spec.selector),
        min_devices=v.spec.min_devices,
        success_threshold=v.spec.success_threshold,
        failure_threshold=v.spec.failure_threshold,
        install_timeout_seconds=v.spec.install_timeout_seconds,
        auto_advance=v.spec.auto_advance,
        created_by=v.created_by,
        created_at=v.created_at,
        updated_at=v.updated_at,
        stages=[
            schemas.StageOut(
                percent=int(s.percent) if float(s.percent).is_integer() else s.percent,
                soak_seconds=s.soak_seconds,
                state=s.state,
                started_at=s.started_at,
                cohort=s.counts.cohort,
                counts=schemas.StageCounts(
                    offered=s.counts.offered,
                    installed=s.counts.installed,
                    failed=s.counts.failed,
                    device_faults=s.counts.device_faults,
                    pending=s.counts.pending,
                    not_reached=s.counts.not_reached,
                ),
            )
            for s in v.stages
        ],
        gates=[
            schemas.GateOut(
                metric=g.metric,
                value=g.value,
                threshold=g.threshold,
                samples=g.samples,
                status=g.status,
                detail=g.detail,
            )
            for g in v.gates
        ],
        history=[
            schemas.HistoryOut(at=h.at, event=h.event, stage=h.stage, detail=h.detail, by=h.by) for h in v.history
        ],
    )


@router.post(
    "",
    status_code=201,
    response_model=schemas.RolloutOut,
    summary="Start rolling a published version out, in stages",
    description="One stage of 100 % with no soak and no gates is an immediate rollout; with `min_devices: 0` "
    "(or nobody in the cohort) it completes at once and the version becomes the model's baseline.",
    responses={
        409: {
            "model": schemas.Problem,
            "description": "the model has an active rollout, or the version is revoked or not above the baseline",
        },
        422: {"model": schemas.Problem, "description": "invalid stages, thresholds or gates"},
        **PROBLEMS,
    },
)
def create_rollout(body: schemas.RolloutCreate, admin: AdminDep, services: ServicesDep) -> JSONResponse:
    view = services.rollouts.create(model=body.model, version=body.version, spec=spec_of(body), by=admin.name)
    return JSONResponse(
        rollout_out(view).model_dump(mode="json"), status_code=201, headers={"Location": f"/v1/rollouts/{view.id}"}
    )


@router.get("", response_model=list[schemas.RolloutOut], summary="List rollouts, newest first", responses=PROBLEMS)
def list_rollouts(
    _admin: AdminDep,
    services: ServicesDep,
    model: Annotated[str | None, Query(pattern=schemas.MODEL_NAME)] = None,
    state: Annotated[schemas.RolloutState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[schemas.RolloutOut]:
    return [rollout_out(v) for v in services.rollouts.list_rollouts(model=model, state=state, limit=limit)]


@router.get(
    "/{rollout_id}",
    response_model=schemas.RolloutOut,
    summary="One rollout: stages with counts, gate values, history",
    responses=PROBLEMS,
)
def get_rollout(rollout_id: RolloutIdPath, _admin: AdminDep, services: ServicesDep) -> schemas.RolloutOut:
    return rollout_out(services.rollouts.get(rollout_id))


def _action_route(action: Action, summary: str) -> None:
    def act(
        rollout_id: RolloutIdPath,
        admin: AdminDep,
        services: ServicesDep,
        body: Annotated[schemas.RolloutAction | None, Body()] = None,
    ) -> schemas.RolloutOut:
        rollouts: RolloutService = services.rollouts
        return rollout_out(rollouts.act(rollout_id, action, reason=body.reason if body else None, by=admin.name))

    router.add_api_route(
        f"/{{rollout_id}}/{action}",
        act,
        methods=["POST"],
        response_model=schemas.RolloutOut,
        summary=summary,
        name=f"{action}_rollout",
        responses={409: {"model": schemas.Problem, "description": "not possible in the rollout's state"}, **PROBLEMS},
    )


_action_route("pause", "Pause: nothing new is offered; devices keep what they have")
_action_route("resume", "Resume a paused rollout (its current stage is judged again)")
_action_route("abort", "Abort: nothing new is offered; devices keep what they have")
_action_route("advance", "Advance to the next stage now (or complete at the last), whatever the data says")
