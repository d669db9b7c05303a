"""Blob downloads from this server (the `file://` backend's download URLs; works on S3 too).

Range requests (206) let devices resume; ETag is the quoted sha256, which never changes for a
content-addressed blob, so If-None-Match and If-Range work without a database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...core.offers import etag_matches
from ...errors import BlobNotFoundError
from ...observability import Metrics
from .. import schemas
from ..deps import BlobAccessDep, ServicesDep
from ..ranges import parse_range

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])
Sha256Path = Annotated[str, Path(pattern=schemas.SHA256, description="sha256 of the blob")]


def _counted(chunks: Iterator[bytes], metrics: Metrics) -> Iterator[bytes]:
    for chunk in chunks:
        metrics.blob_bytes.inc(len(chunk))
        yield chunk


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "the requested byte range"},
    304: {"description": "If-None-Match names this blob"},
    401: {"model": schemas.Problem},
    403: {"model": schemas.Problem},
    404: {"model": schemas.Problem},
    410: {"model": schemas.Problem, "description": "the storage GC deleted it (its version is revoked or superseded)"},
    416: {"model": schemas.Problem},
}


@router.head(
    "/{sha256}", summary="Blob size and ETag", response_class=Response, responses=_RESPONSES, operation_id="head_blob"
)
@router.get(
    "/{sha256}",
    summary="Download a blob (Range supported)",
    response_class=Response,
    responses=_RESPONSES,
    operation_id="get_blob",
)
async def get_blob(sha256: Sha256Path, request: Request, _access: BlobAccessDep, services: ServicesDep) -> Response:
    try:
        size = await run_in_threadpool(services.storage.size, sha256)
    except BlobNotFoundError as e:
        raise await run_in_threadpool(services.registry.missing_blob, sha256, e) from None
    etag = f'"{sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    byte_range = parse_range(request.headers.get("range"), size, if_range=request.headers.get("if-range"), etag=etag)
    start, stop = byte_range or (0, size)
    status = 200 if byte_range is None else 206
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    try:
        chunks = await run_in_threadpool(services.storage.open, sha256, start=start, stop=stop)
    except BlobNotFoundError as e:  # deleted since it was measured
        raise await run_in_threadpool(services.registry.missing_blob, sha256, e) from None
    return StreamingResponse(
        _counted(chunks, services.metrics), status_code=status, headers=headers, media_type="application/octet-stream"
    )
