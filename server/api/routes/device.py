"""Device endpoints: enroll, renew the token, poll for an update, report events.

The poll is the hottest path of the server. It authenticates without a database round trip (a
signed token and the in-memory revocation list), decides between the model's rollout and its
baseline from the in-memory registry view (:func:`server.core.rollout_offers.choose_offer`), and
records last-seen and rollout offers in batches (:mod:`server.core.seen`,
:class:`server.core.rollout_offers.OfferBuffer`): when the device is current, it touches no
database and no storage at all.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...core.fleet import Enrolled
from ...core.offers import etag_matches
from ...core.rollout_offers import choose_offer
from .. import schemas
from ..deps import AuthFirstRoute, DeviceDep, EnrolledDeviceDep, EnrollmentDep, ServicesDep, services_of

router = APIRouter(tags=["device"], route_class=AuthFirstRoute)
POLL_INTERVAL_HEADER = "Ota-Poll-Interval"
TRUST_VERSION_HEADER = "Ota-Trust-Version"  # the tag of GET /v1/trust: agents fetch the chain when it changes
PROBLEMS: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.Problem, "content": {"application/problem+json": {}}} for s in (401, 403, 422, 503)
}


@router.post(
    "/v1/devices/enroll",
    status_code=201,
    response_model=schemas.EnrollResponse,
    summary="Enroll a device with the fleet's enrollment secret",
    responses={
        403: {"model": schemas.Problem},
        409: {"model": schemas.Problem},
        429: {"model": schemas.Problem, "description": "too many enrollments (see Retry-After)"},
    },
)
def enroll(body: EnrollmentDep, services: ServicesDep) -> schemas.EnrollResponse:
    previous = services.signer.read_device_token(body.previous_token) if body.previous_token else None
    enrolled = services.fleet.enroll(device_id=body.device_id, model=body.model, labels=body.labels, previous=previous)
    device = enrolled.device
    services.metrics.enrollments.inc()
    services.metrics.device_tokens.labels("re_enrolled" if enrolled.again else "enrolled").inc()
    return schemas.EnrollResponse(
        device_id=device.device_id,
        model=device.model_name,
        poll_interval=services.offers.poll_interval(device.device_id),
        **_token(enrolled),
    )


def _token(issued: Enrolled) -> dict[str, Any]:
    return {
        "token": issued.token,
        "expires_at": datetime.fromtimestamp(issued.expires, UTC),
        "expires_in": max(0, issued.expires - int(time.time())),
    }


@router.post(
    "/v1/device/token",
    response_model=schemas.TokenResponse,
    summary="Renew the calling device's token before it expires",
    responses=PROBLEMS,
)
def renew_token(device: EnrolledDeviceDep, services: ServicesDep) -> schemas.TokenResponse:
    """A new token for the same enrollment, signed with the current secret key and expiring
    `OTA_DEVICE_TOKEN_SECONDS` from now. The old one keeps working until its own expiry."""
    issued = services.fleet.renew(device)
    services.metrics.device_tokens.labels("renewed").inc()
    return schemas.TokenResponse(**_token(issued))


def _current_version(request: Request) -> int | None:
    """`?current_version=` parsed by hand: FastAPI's declared query parameters (and even Starlette's
    query-string parser) cost a noticeable share of this route, which every device calls every few
    minutes. Digits need no URL-decoding; anything else, the empty value included, is refused like
    FastAPI would (422): `current_version=` is not "absent"."""
    raw: bytes | None = None
    for part in request.scope["query_string"].split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"current_version":
            raw = value
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10 or int(raw) > schemas.MAX_INT:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "current_version"),
                    "msg": f"must be an integer from 0 to {schemas.MAX_INT}",
                    "type": "int_parsing",
                }
            ]
        )
    return int(raw)


@router.get(
    "/v1/device/update",
    summary="What should this device run? 204: nothing new; 200: an offer",
    response_model=schemas.UpdateOffer,
    responses={
        204: {"description": "the device runs the offered version (or newer), or nothing is rolled out to it"},
        304: {"description": "the offer is the one named by If-None-Match"},
        **PROBLEMS,
    },
    openapi_extra={
        "parameters": [
            {
                "name": "current_version",
                "in": "query",
                "required": False,
                "description": "the version the device runs (0: none; absent: the one it last reported)",
                "schema": {"type": "integer", "minimum": 0, "maximum": schemas.MAX_INT},
            },
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "the ETag of the last offer: answered 304 if the offer is unchanged",
                "schema": {"type": "string"},
            },
        ]
    },
)
async def poll_update(request: Request, device: DeviceDep) -> Response:
    services = services_of(request)
    current_version = _current_version(request)
    snapshot = services.view.current()
    services.seen.mark(device.pk)
    interval = services.offers.poll_interval(device.device_id)
    headers = {POLL_INTERVAL_HEADER: str(interval), "Cache-Control": "no-store"}
    if (trust := services.trust.served) is not None:
        headers[TRUST_VERSION_HEADER] = trust.tag
    if current_version is None:  # the version it last reported (EnrolledDeviceDep's check, only when needed)
        current_version = (await run_in_threadpool(services.fleet.enrolled, device.pk)).installed_version
    choice = choose_offer(
        device_pk=device.pk,
        device_id=device.device_id,
        current=current_version,
        baseline=snapshot.heads.get(device.model),
        rollout=snapshot.rollouts.get(device.model),
    )
    services.rollouts.offers.note(choice, device.pk)
    head = choice.head
    if head is None:
        services.metrics.poll_current.inc()
        return Response(status_code=204, headers=headers)
    content = services.offers.cached_content(head.version_id)
    if content is None:
        content = await run_in_threadpool(services.offers.load_content, head.version_id, head.model)
    base_url = (services.settings.public_url or str(request.base_url)).rstrip("/")
    offer = services.offers.build(
        head=head,
        content=content,
        current_version=current_version,
        interval=interval,
        base_url=base_url,
        published=snapshot.versions.get(head.model_id, frozenset()),
    )
    headers["ETag"] = offer.etag
    if etag_matches(request.headers.get("if-none-match"), offer.etag):
        services.metrics.poll_not_modified.inc()
        return Response(status_code=304, headers=headers)
    services.metrics.poll_update.inc()
    services.offers.count(offer)
    return Response(offer.body, status_code=200, media_type="application/json", headers=headers)


@router.post(
    "/v1/device/events",
    response_model=schemas.EventsResponse,
    summary='Report events (a JSON array, or {"events": [...]})',
    responses=PROBLEMS,
)
def post_events(
    device: EnrolledDeviceDep,
    services: ServicesDep,
    body: Annotated[schemas.EventList | schemas.EventBatch, Body()],
) -> JSONResponse:
    events = body.events if isinstance(body, schemas.EventBatch) else body
    row = services.fleet.record_events(device_pk=device.id, events=events)
    for e in events:
        services.metrics.device_events.labels(e.type).inc()
    result = schemas.EventsResponse(recorded=len(events), status=row.status, installed_version=row.installed_version)
    interval = services.offers.poll_interval(device.device_id)
    return JSONResponse(result.model_dump(), headers={POLL_INTERVAL_HEADER: str(interval)})
