"""Dependencies: services and every authorization decision.

A route states who may call it by the dependency it takes — :data:`AdminDep`, :data:`DeviceDep`,
:data:`EnrolledDeviceDep`, :data:`BlobAccessDep` — and never checks a credential itself. A device
route acts on the device the token names; there is no device id in its path that another device
could swap in. Routes get no database session: the core services they call open their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from ..core.security import DeviceIdentity, secret_equals
from ..core.services import Services
from ..db.models import Device
from ..errors import AuthenticationError, EnrollmentRefusedError, ForbiddenError
from .schemas import EnrollRequest


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
    sha256: str,
    expires: Annotated[int | None, Query(description="expiry of a signed download URL")] = None,
    sig: Annotated[str | None, Query(max_length=64, description="signature of a signed download URL")] = None,
) -> None:
    """A signed download URL (as handed out in offers), or any admin or device token."""
    if expires is not None or sig is not None:
        if expires is None or sig is None or not services.signer.check_blob_signature(sha256, expires, sig):
            raise ForbiddenError("the download URL's signature is invalid or expired; poll again for a fresh one")
        return
    token = bearer_token(request)
    identity = services.auth.device(token)
    if identity is not None:
        request.state.device_id = identity.device_id
        return
    name = await run_in_threadpool(services.auth.admin, token)
    if name is None:
        raise AuthenticationError("unknown or revoked token")
    request.state.admin = name


async def require_enrollment_secret(body: EnrollRequest, services: ServicesDep) -> EnrollRequest:
    """Enrollment is authorized by the fleet's shared secret in the body, not by a bearer token."""
    if not secret_equals(body.enrollment_secret, services.settings.enrollment_secret.get_secret_value()):
        raise EnrollmentRefusedError("the enrollment secret is wrong")
    return body


AdminDep = Annotated[Admin, Depends(require_admin)]
EnrollmentDep = Annotated[EnrollRequest, Depends(require_enrollment_secret)]
DeviceDep = Annotated[DeviceIdentity, Depends(require_device)]
EnrolledDeviceDep = Annotated[Device, Depends(require_enrolled_device)]
BlobAccessDep = Annotated[None, Depends(require_blob_access)]
