"""Fleet endpoints (admin): list and inspect devices, decommission one, fleet summary."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from ...db.models import Device
from .. import schemas
from ..deps import AdminDep, AuthFirstRoute, ServicesDep

router = APIRouter(tags=["fleet"], route_class=AuthFirstRoute)
DeviceIdPath = Annotated[str, Path(pattern=schemas.DEVICE_ID)]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.Problem, "content": {"application/problem+json": {}}} for s in (400, 401, 403, 404)
}


def device_out(device: Device, labels: dict[str, str]) -> schemas.DeviceOut:
    return schemas.DeviceOut(
        device_id=device.device_id,
        model=device.model_name,
        labels=labels,
        installed_version=device.installed_version,
        status=device.status,
        status_reason=device.status_reason,
        status_at=device.status_at,
        enrolled_at=device.enrolled_at,
        last_seen_at=device.last_seen_at,
    )


def fleet_summary(
    by_version: list[tuple[str, int | None, int]], by_status: list[tuple[str, str, int]], offered: dict[str, int]
) -> schemas.Fleet:
    """The fleet document from the device counts per (model, version) and per (model, status)."""
    models: dict[str, schemas.FleetModel] = {}

    def entry(name: str) -> schemas.FleetModel:
        if name not in models:
            models[name] = schemas.FleetModel(
                model=name, offered_version=offered.get(name), devices=0, versions=[], statuses={}
            )
        return models[name]

    for name, version, count in by_version:
        m = entry(name)
        m.devices += count
        m.versions.append(schemas.VersionCount(version=version, devices=count))
    for name, status, count in by_status:
        entry(name).statuses[status] = count
    for name in offered:
        entry(name)
    return schemas.Fleet(models=[models[k] for k in sorted(models)])


@router.get(
    "/v1/devices", response_model=schemas.DevicePage, summary="List devices (filters, cursor pages)", responses=PROBLEMS
)
def list_devices(
    _admin: AdminDep,
    services: ServicesDep,
    model: Annotated[str | None, Query(pattern=schemas.MODEL_NAME)] = None,
    version: Annotated[int | None, Query(ge=0, le=schemas.MAX_INT, description="installed version")] = None,
    status: Annotated[schemas.DeviceStatus | None, Query()] = None,
    label: Annotated[
        list[Annotated[str, StringConstraints(max_length=300, pattern=schemas.NO_NUL)]],
        Query(max_length=8, description="key:value, repeatable (all must match)"),
    ] = [],  # noqa: B006 - FastAPI copies defaults
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> schemas.DevicePage:
    page = services.fleet.list_devices(
        model=model, version=version, status=status, labels=label, cursor=cursor, limit=limit
    )
    return schemas.DevicePage(
        items=[device_out(d, labels) for d, labels in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/v1/devices/{device_id}",
    response_model=schemas.DeviceDetail,
    summary="One device with its recent events",
    responses=PROBLEMS,
)
def get_device(device_id: DeviceIdPath, _admin: AdminDep, services: ServicesDep) -> schemas.DeviceDetail:
    record = services.fleet.get_device(device_id)
    device = record.device
    return schemas.DeviceDetail(
        **device_out(device, record.labels).model_dump(),
        last_metrics=device.last_metrics,
        recent_events=[
            schemas.EventOut(
                type=e.type,
                version=e.version,
                reason=e.reason,
                metrics=e.metrics,
                device_time=e.device_time,
                received_at=e.received_at,
            )
            for e in record.events
        ],
        previous_version=device.previous_version,
        metric_history=[
            schemas.MetricSummaryOut(
                version=m.version,
                windows=m.windows,
                requests=m.requests,
                p50_ms=m.p50_sum / m.requests if m.requests else None,
                p95_ms=m.p95_sum / m.requests if m.requests else None,
                mean_confidence=m.confidence_sum / m.requests if m.requests else None,
                first_at=m.first_at,
                last_at=m.last_at,
            )
            for m in record.summaries
        ],
    )


@router.delete(
    "/v1/devices/{device_id}",
    status_code=204,
    summary="Decommission a device: delete it and revoke its token",
    description="Answers once no server process accepts the device's token any more. "
    "The device id may then enroll again.",
    responses=PROBLEMS,
)
async def delete_device(device_id: DeviceIdPath, _admin: AdminDep, services: ServicesDep) -> Response:
    await run_in_threadpool(services.fleet.delete_device, device_id)
    await run_in_threadpool(services.view.refresh)
    await asyncio.sleep(services.view.propagation_delay)
    return Response(status_code=204)


@router.get(
    "/v1/fleet",
    response_model=schemas.Fleet,
    summary="Devices per model by installed version and status",
    responses=PROBLEMS,
)
def get_fleet(_admin: AdminDep, services: ServicesDep) -> schemas.Fleet:
    offered = {name: head.version for name, head in services.view.current().heads.items()}
    return fleet_summary(*services.fleet.counts(), offered)
