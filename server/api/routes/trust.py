"""The root of trust: operators upload root and keys documents (admin); devices read the chain.

The chain is signed data, so reading it needs no credential; it is served from memory with an ETag
(the tag `r<root>-k<keys>`), and every poll answer names the tag in ``Ota-Trust-Version`` so that an
agent fetches it only when it changed. See :mod:`server.core.trust` and docs/security.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...core.offers import etag_matches
from ...core.trust import Accepted, Kind
from ...errors import NotFoundError
from .. import schemas
from ..deps import AdminDep, AuthFirstRoute, ServicesDep

router = APIRouter(prefix="/v1/trust", tags=["trust"], route_class=AuthFirstRoute)
PROBLEM = {"model": schemas.Problem, "content": {"application/problem+json": {}}}
DOCUMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["signed", "signatures"],
                    "properties": {"signed": {"type": "object"}, "signatures": {"type": "array"}},
                }
            }
        },
    }
}


def _out(accepted: Accepted) -> dict[str, Any]:
    document, signed = accepted.document, accepted.document.signed
    return schemas.TrustDocumentOut(
        kind=document.signed.type,
        version=signed.version,
        expires=signed.expires,
        threshold=signed.threshold,
        keys=sorted(signed.keys),
        revoked=list(getattr(signed, "revoked", [])),
        created=accepted.created,
        warning=accepted.warning,
        revoked_versions=[
            schemas.KeyRevokedVersion(model=v.model, version=v.version, keyid=v.keyid, reason=v.reason)
            for v in accepted.revoked_versions
        ],
    ).model_dump(mode="json")


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": schemas.TrustDocumentOut, "description": "this document was stored already"},
    409: {**PROBLEM, "description": "version below or equal to the stored one with other content, or a skipped root"},
    422: {**PROBLEM, "description": "malformed, expired, or not signed by the threshold that must sign it"},
    **{s: PROBLEM for s in (401, 403)},
}


def _upload(kind: Kind, summary: str, description: str | None = None) -> None:
    """Declare ``PUT /v1/trust/<kind>`` (endpoint `put_<kind>`): the root and keys uploads differ only in that."""

    async def upload(request: Request, admin: AdminDep, services: ServicesDep) -> JSONResponse:
        body = await request.body()  # bounded by BodyLimit (OTA_MAX_REQUEST_BYTES); parsed with its own bounds
        accepted = await run_in_threadpool(services.trust.put, kind, body, by=admin.name)
        if accepted.revoked_versions:  # like POST …/revoke: answer once no process offers them any more
            await asyncio.sleep(services.view.propagation_delay)
        return JSONResponse(_out(accepted), status_code=201 if accepted.created else 200)

    router.add_api_route(
        f"/{kind}",
        upload,
        methods=["PUT"],
        name=f"put_{kind}",
        status_code=201,
        response_model=schemas.TrustDocumentOut,
        summary=summary,
        description=description,
        responses=RESPONSES,
        openapi_extra=DOCUMENT_BODY,
    )


_upload("root", "Upload a root document (the first one, or the next version signed by the previous root and its own)")
_upload(
    "keys",
    "Upload a keys document (publisher keys, threshold, revoked keys) signed by the current root",
    description="Every version the door now refuses because of a key this document revokes is revoked with a "
    "reason naming the key (listed in `revoked_versions`); its active rollout is aborted. The answer then comes "
    "once no server process offers those versions (after about twice OTA_CACHE_SECONDS).",
)


@router.get(
    "",
    response_model=schemas.TrustChainOut,
    summary="The chain of trust documents devices verify (signed data: no credential needed)",
    responses={304: {"description": "unchanged since the ETag in If-None-Match"}, 404: PROBLEM},
)
async def get_chain(request: Request, services: ServicesDep) -> Response:
    served = services.trust.served
    if served is None:
        raise NotFoundError("no root of trust is configured on this server (PUT /v1/trust/root)")
    headers = {"ETag": served.etag, "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), served.etag):
        return Response(status_code=304, headers=headers)
    return Response(served.body, media_type="application/json", headers=headers)
