"""Request bodies too big to hold twice: streamed to a temporary file under the body limit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import Request
from starlette.requests import ClientDisconnect

from ..errors import BadRequestError
from .problems import BODY_LIMIT_KEY


async def spool_body(request: Request, *, limit: int) -> Path:
    """Stream the body to a temp file (the caller deletes it). The :class:`BodyLimit` middleware
    refuses it with 413 as soon as it passes `limit` — or before a byte is read, if Content-Length
    already says so."""
    request.scope[BODY_LIMIT_KEY] = limit
    fd, name = tempfile.mkstemp(prefix="ota-upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
    except ClientDisconnect as e:
        path.unlink(missing_ok=True)
        raise BadRequestError("the request body ended early (client disconnected or body over the limit)") from e
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
