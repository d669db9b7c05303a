"""RFC 9457 problem documents for every error, and the request-body limit.

Every non-2xx answer is ``application/problem+json`` with `type`, `title`, `status` and a
`detail` that says precisely what was wrong. 503s carry ``Retry-After``. An unexpected exception
is a bug: :class:`CatchAll` logs it once, as one JSON line with the traceback in a field, and
answers a generic 500 problem that leaks nothing. (Starlette's own handler for ``Exception``
re-raises after answering, so the server logged every 500 a second time as a raw multi-line
traceback; the exception therefore never leaves :class:`CatchAll`.)

Also here, the other plain-ASGI middlewares that shape every answer: :class:`SecurityHeaders` and
:class:`TrustedHosts` (Starlette's ``TrustedHostMiddleware`` answers in plain text; this one answers
with a problem document like every other refusal).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import OtaServerError, PayloadTooLargeError, UnavailableError
from ..observability import Metrics

PROBLEM_JSON = "application/problem+json"
BODY_LIMIT_KEY = "ota.body_limit"
log = logging.getLogger("ota.errors")

_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
}


def problem_body(*, status: int, slug: str, title: str, detail: str, **extra: Any) -> bytes:
    doc = {"type": f"urn:ota:problem:{slug}", "title": title, "status": status, "detail": detail, **extra}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def problem_response(
    *, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = problem_body(status=status, slug=slug, title=title, detail=detail, **extra)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_PROBLEM_SCHEMA = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem document; 422s add `errors` (loc, msg), artifact refusals `reason`",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def document_problems(app: FastAPI) -> None:
    """Declare in the OpenAPI what every route answers on error: ``application/problem+json``.

    Each declared 4xx/5xx answer gets the problem media type (FastAPI's own 422 schema included),
    and every operation gets a ``default`` problem answer for the rest (401, 413, 503 …), so that
    clients generated from ``/openapi.json`` parse every error.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = _PROBLEM_SCHEMA
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code, response in responses.items():
                    if code == "default" or int(code) >= 400:
                        response["content"] = content
                responses.setdefault("default", {"description": "an error, as a problem document", "content": content})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_problem_handlers(app: FastAPI, metrics: Metrics, *, retry_after: int) -> None:
    """Register the handlers that turn every exception into a problem document."""

    def respond(
        status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> Response:
        metrics.errors.labels(str(status), slug).inc()
        return problem_response(status=status, slug=slug, title=title, detail=detail, headers=headers, **extra)

    async def server_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OtaServerError)
        headers = dict(exc.headers)
        if isinstance(exc, UnavailableError):
            headers.setdefault("Retry-After", str(retry_after))
            log.warning("%s: %s", exc.slug, exc.detail)
        extra = {"reason": exc.reason} if hasattr(exc, "reason") else {}
        return respond(exc.status, exc.slug, exc.title, exc.detail, headers, **extra)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()[:20]]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5]) or "invalid request"
        return respond(422, "invalid-request", "Invalid request", detail, errors=errors)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        return respond(exc.status_code, slug, title, detail, dict(exc.headers or {}))

    app.add_exception_handler(OtaServerError, server_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


class BodyLimit:
    """ASGI middleware: refuse request bodies over a limit with 413, without reading them whole.

    The limit is ``default`` unless a route raises it for its request (``scope[BODY_LIMIT_KEY]``,
    set by a dependency before the body is read — the artifact upload does). A declared
    Content-Length over the limit is refused before a single body byte is read; a chunked body is
    counted as it arrives and cut off at the first chunk past the limit. Either way the 413 is sent
    from here, and the app sees a disconnect so it stops reading.
    """

    def __init__(self, app: ASGIApp, *, default: int, metrics: Metrics) -> None:
        self.app = app
        self.default = default
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == 0 or (declared is None and not _chunked(scope)):
            await self.app(scope, receive, send)  # no body to limit
            return
        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            limit = scope.get(BODY_LIMIT_KEY, self.default)
            if declared is not None and declared > limit:
                await refuse(limit, f"the body declares {declared} bytes; the limit is {limit}")
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await refuse(limit, f"the body exceeds the {limit}-byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def refuse(limit: int, detail: str) -> None:
            nonlocal refused
            refused = True
            if started:
                return
            error = PayloadTooLargeError(detail)
            self.metrics.errors.labels("413", error.slug).inc()
            body = problem_body(status=413, slug=error.slug, title=error.title, detail=detail, limit=limit)
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 already went out; drop whatever the app answers to the disconnect
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope["headers"])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class CatchAll:
    """ASGI middleware (innermost): an exception that no handler turned into a problem is a bug.

    It is logged once (logger ``ota.errors``, the traceback in the JSON line's ``exc`` field) and
    answered 500 if the response has not started; it is never re-raised, so the ASGI server does
    not log it again as a raw traceback.
    """

    BODY = problem_body(
        status=500, slug="internal-error", title="Internal server error", detail="the server failed unexpectedly"
    )

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.error(
                "unhandled %s on %s %s",
                type(exc).__name__,
                scope.get("method"),
                scope.get("path"),
                exc_info=exc,
                extra={"fields": {"method": scope.get("method"), "path": scope.get("path")}},
            )
            self.metrics.errors.labels("500", "internal-error").inc()
            if started:
                return  # too late for a status: the connection ends with a short body
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(self.BODY)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self.BODY})


# default-src 'none' and only this server's own scripts, styles, images and API: what the docs page
# (Swagger UI served from the wheel) and a server-rendered dashboard need, and nothing from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, unless the route set its own (the
    dashboard's pages carry a stricter policy of their own); a header is never sent twice."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [h for h in SECURITY_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, with_headers)


class TrustedHosts:
    """ASGI middleware: refuse a request whose ``Host`` is not in ``OTA_TRUSTED_HOSTS`` (400 problem).

    A name is matched exactly (case-insensitive, port ignored); ``*.example.com`` matches any
    subdomain. Download URLs built from the request's Host can then only name a host the operator listed.
    """

    def __init__(self, app: ASGIApp, *, hosts: list[str], metrics: Metrics) -> None:
        self.app = app
        self.exact = {h.lower() for h in hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*."))
        self.metrics = metrics

    def allowed(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower()
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if self.allowed(host):
            await self.app(scope, receive, send)
            return
        self.metrics.errors.labels("400", "untrusted-host").inc()
        body = problem_body(
            status=400, slug="untrusted-host", title="Untrusted host", detail="the Host header names no trusted host"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
