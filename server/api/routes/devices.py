"""Fleet endpoints (admin): list and inspect devices, decommission one, fleet summary."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from ...core import fleet
from ...data import devices as device_data
from ...errors import DeviceNotFoundError
from .. import schemas
from ..deps import AdminDep, ServicesDep, SessionDep

router = APIRouter(tags=["fleet"])
DeviceIdPath = Annotated[str, Path(pattern=schemas.DEVICE_ID)]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.Problem, "content": {"application/problem+json": {}}} for s in (400, 401, 403, 404)
}


@router.get(
    "/v1/devices", response_model=schemas.DevicePage, summary="List devices (filters, cursor pages)", responses=PROBLEMS
)
def list_devices(
    _admin: AdminDep,
    session: SessionDep,
    model: Annotated[str | None, Query(pattern=schemas.MODEL_NAME)] = None,
    version: Annotated[int | None, Query(ge=0, le=schemas.MAX_INT, description="installed version")] = None,
    status: Annotated[schemas.DeviceStatus | None, Query()] = None,
    label: Annotated[list[str], Query(max_length=8, description="key:value, repeatable (all must match)")] = [],  # noqa: B006 - FastAPI copies defaults
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> schemas.DevicePage:
    after = fleet.decode_cursor(cursor)
    labels = fleet.parse_labels(label)
    page = device_data.list_devices(
        session, model=model, version=version, status=status, labels=labels, after=after, limit=limit + 1
    )
    more = len(page) > limit
    page = page[:limit]
    label_map = device_data.labels_of(session, pks=[d.id for d in page])
    return schemas.DevicePage(
        items=[fleet.device_out(d, label_map[d.id]) for d in page],
        next_cursor=fleet.encode_cursor(page[-1].id) if more else None,
    )


@router.get(
    "/v1/devices/{device_id}",
    response_model=schemas.DeviceDetail,
    summary="One device with its recent events",
    responses=PROBLEMS,
)
def get_device(device_id: DeviceIdPath, _admin: AdminDep, session: SessionDep) -> schemas.DeviceDetail:
    device = device_data.get_device(session, device_id=device_id)
    if device is None:
        raise DeviceNotFoundError(f"no device {device_id!r}")
    labels = device_data.labels_of(session, pks=[device.id])[device.id]
    events = device_data.recent_events(session, device_pk=device.id)
    return schemas.DeviceDetail(
        **fleet.device_out(device, labels).model_dump(),
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
            for e in events
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
    def delete() -> None:
        with services.db.session() as session:
            device = device_data.get_device(session, device_id=device_id)
            if device is None:
                raise DeviceNotFoundError(f"no device {device_id!r}")
            device_data.delete_device(session, device=device)
            session.commit()

    await run_in_threadpool(delete)
    await run_in_threadpool(services.view.refresh)
    await asyncio.sleep(services.view.propagation_delay)
    return Response(status_code=204)


@router.get(
    "/v1/fleet",
    response_model=schemas.Fleet,
    summary="Devices per model by installed version and status",
    responses=PROBLEMS,
)
def get_fleet(_admin: AdminDep, services: ServicesDep, session: SessionDep) -> schemas.Fleet:
    offered = {name: head.version for name, head in services.view.current().heads.items()}
    return fleet.fleet_summary(session, offered)
