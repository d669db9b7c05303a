"""Dependencies: services and every authorization decision.

A route states who may call it by the dependency it takes — :data:`AdminDep`, :data:`DeviceDep`,
:data:`EnrolledDeviceDep`, :data:`BlobAccessDep` — and never checks a credential itself. A device
route acts on the device the token names; there is no device id in its path that another device
could swap in. Routes get no database session: the core services they call open their own.

FastAPI reads and parses a request's body *before* it solves dependencies, so a route with a body
uses :class:`AuthFirstRoute` (its router's ``route_class``): the credential its dependencies ask
for is checked first, and a stranger's body is never read or parsed (401, not 422).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from ..core.security import DeviceIdentity, secret_equals
from ..core.services import Services
from ..db.models import Device
from ..errors import (
    AuthenticationError,
    BlobNotFoundError,
    ForbiddenError,
    RateLimitedError,
)
from .schemas import SHA256, EnrollRequest


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("this endpoint needs an Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


@dataclass(frozen=True)
class Admin:
    name: str


async def require_admin(request: Request, services: ServicesDep) -> Admin:
    token = bearer_token(request)
    name = await run_in_threadpool(services.auth.admin, token)
    if name is not None:
        request.state.admin = name
        return Admin(name)
    if services.auth.device(token) is not None:
        raise ForbiddenError("a device token cannot use admin endpoints")
    raise AuthenticationError("unknown or revoked admin token")


async def require_device(request: Request) -> DeviceIdentity:
    # Takes only the request (no sub-dependencies): this guards the update poll, the hottest path,
    # and every dependency FastAPI has to solve costs time on each request.
    services = services_of(request)
    token = bearer_token(request)
    identity = services.auth.device(token)
    if identity is not None:
        request.state.device_id = identity.device_id
        return identity
    if await run_in_threadpool(services.auth.admin, token) is not None:
        raise ForbiddenError("device endpoints act for the calling device: use a device token")
    raise AuthenticationError("unknown or revoked device token")


async def require_enrolled_device(
    request: Request, device: Annotated[DeviceIdentity, Depends(require_device)]
) -> Device:
    """The calling device's row: a valid token whose device was deleted since the last registry refresh is 401."""
    return await run_in_threadpool(services_of(request).fleet.enrolled, device.pk)


async def require_blob_access(
    request: Request,
    services: ServicesDep,
    sha256: Annotated[str, Path(pattern=SHA256)],  # checked here too: a non-digest never reaches the signer
    expires: Annotated[int | None, Query(description="expiry of a signed download URL")] = None,
    sig: Annotated[str | None, Query(max_length=64, description="signature of a signed download URL")] = None,
    kid: Annotated[str | None, Query(max_length=16, description="id of the key that signed the URL")] = None,
) -> None:
    """A signed download URL (as handed out in offers), an admin token, or a device token for a blob
    of its own model (a payload, ONNX or delta of one of its versions). Another model's blob is 404 to
    a device, exactly like a blob that does not exist, so a token cannot probe what else is stored."""
    if expires is not None or sig is not None:
        if expires is None or sig is None:
            raise ForbiddenError("a signed download URL needs both expires and sig; poll again for a fresh one")
        refusal = services.signer.blob_url_refusal(sha256, expires, sig, kid=kid)
        if refusal is not None:
            raise ForbiddenError(refusal)
        return
    token = bearer_token(request)
    identity = services.auth.device(token)
    if identity is not None:
        request.state.device_id = identity.device_id
        if not await run_in_threadpool(services.registry.model_has_blob, identity.model, sha256):
            raise BlobNotFoundError(f"no blob {sha256} among the versions of model {identity.model!r}")
        return
    name = await run_in_threadpool(services.auth.admin, token)
    if name is None:
        raise AuthenticationError("unknown or revoked token")
    request.state.admin = name


_ADMITTED = "ota.enrollment_admitted"


async def admit_enrollment(request: Request) -> None:
    """The enrollment rate limits (:mod:`server.core.ratelimit`): 429 + Retry-After when a bucket is empty.

    Checked before the body is read (:class:`AuthFirstRoute` runs it first) and only once per request,
    whether the secret turns out right or wrong: guessing at the secret costs tokens too."""
    if request.scope.get(_ADMITTED):
        return
    request.scope[_ADMITTED] = True
    services = services_of(request)
    refusal = services.enrollment_limiter.admit(request.client.host if request.client else None)
    if refusal is None:
        return
    services.metrics.enrollments_limited.labels(refusal.scope).inc()
    who = "from this address" if refusal.scope == "address" else "from all clients together"
    raise RateLimitedError(
        f"too many enrollments {who}; retry in {refusal.retry_after} s", retry_after=refusal.retry_after
    )


async def require_enrollment_secret(
    body: EnrollRequest, services: ServicesDep, _admitted: Annotated[None, Depends(admit_enrollment)]
) -> EnrollRequest:
    """Enrollment is authorized by the fleet's shared secret in the body (the current one, or a
    previous one until it retires), not by a bearer token."""
    services.auth.enrollment.check(body.enrollment_secret)
    return body


async def require_metrics_access(request: Request) -> None:
    """``OTA_METRICS_TOKEN`` as a bearer token when it is set (always, in production); open otherwise."""
    expected = services_of(request).settings.metrics_token
    if expected is None:
        return
    if not secret_equals(bearer_token(request), expected.get_secret_value()):
        raise AuthenticationError("/metrics needs the metrics token (OTA_METRICS_TOKEN)")


def _admin_guard(request: Request) -> Awaitable[Admin]:
    return require_admin(request, services_of(request))


_GUARDS: dict[Callable[..., Any], Callable[[Request], Awaitable[object]]] = {
    require_admin: _admin_guard,
    require_device: require_device,
    admit_enrollment: admit_enrollment,
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


class AuthFirstRoute(APIRoute):
    """A route that checks its credential before FastAPI reads the body (see the module docstring).

    The guard is the admin or device check (or the enrollment rate limit) found among the route's
    dependencies; the dependency still runs as usual afterwards (for a device, a cached token check:
    no second HMAC; the rate limit is not charged twice).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        guard = next((_GUARDS[c] for c in _calls(self.dependant) if c in _GUARDS), None)
        if guard is None or self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            await guard(request)
            return await handler(request)

        return checked


MetricsAccessDep = Annotated[None, Depends(require_metrics_access)]
AdminDep = Annotated[Admin, Depends(require_admin)]
EnrollmentDep = Annotated[EnrollRequest, Depends(require_enrollment_secret)]
DeviceDep = Annotated[DeviceIdentity, Depends(require_device)]
EnrolledDeviceDep = Annotated[Device, Depends(require_enrolled_device)]
BlobAccessDep = Annotated[None, Depends(require_blob_access)]
