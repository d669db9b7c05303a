"""Registry endpoints (admin): publish, list, inspect and revoke model versions."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...db.models import ModelVersion
from .. import schemas
from ..deps import AdminDep, AuthFirstRoute, ServicesDep
from ..uploads import spool_body

router = APIRouter(prefix="/v1/models", tags=["registry"], route_class=AuthFirstRoute)
ModelPath = Annotated[str, Path(pattern=schemas.MODEL_NAME, description="model name")]
VersionPath = Annotated[int, Path(ge=1, le=schemas.MAX_INT)]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.Problem, "content": {"application/problem+json": {}}} for s in (401, 403, 404)
}


def version_summary(model: str, row: ModelVersion) -> schemas.VersionSummary:
    return schemas.VersionSummary(
        model=model,
        version=row.version,
        parent_version=row.parent_version,
        created_at=row.created_at,
        expires_at=row.expires_at,
        published_at=row.published_at,
        published_by=row.published_by,
        payload=schemas.BlobRef(length=row.payload_length, sha256=row.payload_sha256),
        onnx=schemas.BlobRef(length=row.onnx_length, sha256=row.onnx_sha256),
        artifact_sha256=row.artifact_sha256,
        revoked=row.revoked_at is not None,
        revoked_at=row.revoked_at,
        revoked_reason=row.revoked_reason,
        collected_at=row.collected_at,
    )


@router.post(
    "/{model}/versions",
    status_code=201,
    response_model=schemas.VersionSummary,
    summary="Publish a version (body: the artifact file)",
    responses={
        200: {"model": schemas.VersionSummary, "description": "this exact file was already published"},
        409: {"model": schemas.Problem, "description": "same version with other bytes, or not above the latest"},
        413: {"model": schemas.Problem, "description": "artifact over OTA_MAX_ARTIFACT_BYTES"},
        422: {
            "model": schemas.Problem,
            "description": "the artifact fails verification, or its model decodes past OTA_MAX_MODEL_BYTES",
        },
        **PROBLEMS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def publish_version(model: ModelPath, request: Request, admin: AdminDep, services: ServicesDep) -> JSONResponse:
    settings = services.settings
    path = await spool_body(request, limit=settings.max_artifact_bytes, directory=settings.upload_spool)
    try:
        with path.open("rb") as source:  # read from the spool file: the head first, the payload only if authentic
            result = await run_in_threadpool(
                services.publisher.publish,
                model=model,
                source=source,
                length=path.stat().st_size,
                publisher=admin.name,
            )
    except Exception:
        services.metrics.publishes.labels("rejected").inc()
        raise
    finally:
        path.unlink(missing_ok=True)
    row = result.version
    if result.created:
        services.metrics.publishes.labels("created").inc()
        await run_in_threadpool(services.view.refresh)
        if result.previous_offered is not None:
            services.deltas.request(row.model_id, result.previous_offered, row.version)
    else:
        services.metrics.publishes.labels("unchanged").inc()
    body = version_summary(model, row).model_dump(mode="json")
    return JSONResponse(
        body,
        status_code=201 if result.created else 200,
        headers={"Location": f"/v1/models/{model}/versions/{row.version}"},
    )


@router.get("", response_model=list[schemas.ModelOut], summary="List models", responses=PROBLEMS)
def list_models(_admin: AdminDep, services: ServicesDep) -> list[schemas.ModelOut]:
    return [
        schemas.ModelOut(
            name=m.name,
            created_at=m.created_at,
            versions=m.versions,
            latest_version=m.latest_version,
            offered_version=m.offered_version,
        )
        for m in services.registry.list_models()
    ]


@router.get(
    "/{model}/versions",
    response_model=list[schemas.VersionSummary],
    summary="List versions, newest first",
    responses=PROBLEMS,
)
def list_versions(model: ModelPath, _admin: AdminDep, services: ServicesDep) -> list[schemas.VersionSummary]:
    return [version_summary(model, row) for row in services.registry.list_versions(model)]


@router.get(
    "/{model}/versions/{version}",
    response_model=schemas.VersionDetail,
    summary="One version in full",
    responses=PROBLEMS,
)
def get_version(
    model: ModelPath, version: VersionPath, _admin: AdminDep, services: ServicesDep
) -> schemas.VersionDetail:
    record = services.registry.get_version(model, version)
    row = record.version
    return schemas.VersionDetail(
        **version_summary(model, row).model_dump(),
        manifest=json.loads(row.manifest_bytes),
        manifest_b64=base64.b64encode(row.manifest_bytes).decode("ascii"),
        signatures=json.loads(row.signatures),
        deltas=[
            schemas.DeltaSummary(from_version=d.from_version, status=d.status, length=d.length) for d in record.deltas
        ],
    )


@router.post(
    "/{model}/versions/{version}/revoke",
    response_model=schemas.VersionSummary,
    summary="Revoke a version: it is never offered again",
    description="Answers once every server process has stopped offering the version "
    "(after about twice OTA_CACHE_SECONDS). Revoking again is harmless; the first reason is kept.",
    responses=PROBLEMS,
)
async def revoke_version(
    model: ModelPath,
    version: VersionPath,
    _admin: AdminDep,
    services: ServicesDep,
    body: Annotated[schemas.RevokeRequest | None, Body()] = None,
) -> schemas.VersionSummary:
    row = await run_in_threadpool(
        lambda: services.registry.revoke(model, version, reason=body.reason if body else None)
    )
    summary = version_summary(model, row)
    await run_in_threadpool(services.view.refresh)
    await asyncio.sleep(services.view.propagation_delay)
    return summary
