"""Operations: liveness, readiness, Prometheus metrics.

Probes need no token, and say nothing an attacker could use (no paths, no versions). ``/metrics``
takes ``OTA_METRICS_TOKEN`` as a bearer token when one is set — always in production.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from ...errors import UnavailableError
from .. import schemas
from ..deps import MetricsAccessDep, ServicesDep
from ..problems import problem_response

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=schemas.Health, summary="The process is alive")
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Health,
    summary="Database and storage reachable",
    responses={503: {"model": schemas.Problem}},
)
async def readyz(services: ServicesDep) -> Response:
    checks: dict[str, str] = {}
    failed = []
    for name, check in (("database", services.db.ping), ("storage", services.storage.check)):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except UnavailableError as e:
            checks[name] = e.detail
            failed.append(name)
    if failed:
        services.metrics.errors.labels("503", "not-ready").inc()
        return problem_response(
            status=503,
            slug="not-ready",
            title="Not ready",
            detail=f"{' and '.join(failed)} unavailable",
            headers={"Retry-After": str(services.settings.retry_after)},
            checks=checks,
        )
    return JSONResponse({"status": "ok", "checks": checks})


@router.get(
    "/metrics",
    summary="Prometheus metrics (bearer OTA_METRICS_TOKEN when set)",
    response_class=Response,
    responses={401: {"model": schemas.Problem}},
)
async def metrics(_access: MetricsAccessDep, services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
