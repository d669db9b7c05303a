"""The app factory: settings in, a FastAPI app with every service wired out.

Nothing here reads the environment: :func:`create_app` gets a :class:`Settings` (the CLI builds it
from ``OTA_*``). The services live in one :class:`Services` object on ``app.state``; the
dependencies in :mod:`server.api.deps` hand them to routes. Background work — the registry view's
refresh, the last-seen and rollout-offer flushes, rollout evaluation, delta builds, the periodic gc
when configured — starts and stops with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from .api.problems import (
    BodyLimit,
    CatchAll,
    SecurityHeaders,
    TrustedHosts,
    document_problems,
    install_problem_handlers,
)
from .api.routes import blobs, dashboard, device, devices, docs, ops, registry, rollouts, trust
from .api.uploads import sweep_spool
from .config import Settings
from .core.services import Services, build_services
from .errors import DatabaseUnavailableError
from .observability import RequestObserver

log = logging.getLogger("ota.app")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    await run_in_threadpool(sweep_spool, services.settings.upload_spool)  # bodies of killed processes
    await run_in_threadpool(services.storage.start)
    try:
        await run_in_threadpool(services.view.refresh)
    except DatabaseUnavailableError as e:  # serve anyway: /readyz says not ready, polls answer 503
        log.warning("database unavailable at start: %s", e.detail)
    try:  # a keys document stored before this process (or before this server knew to) revokes versions too
        await run_in_threadpool(services.trust.revoke_condemned)
    except DatabaseUnavailableError as e:  # the next keys upload or start sweeps again
        log.warning("versions signed by revoked keys not checked at start: %s", e.detail)
    loops = (services.view, services.seen, services.access, services.rollouts, services.rollouts.offers, services.trust)
    extra = () if services.housekeeping is None else (services.housekeeping,)
    tasks = [asyncio.create_task(t.run()) for t in (*loops, *extra)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        services.access.flush()
        try:
            await run_in_threadpool(services.seen.flush)
        except DatabaseUnavailableError as e:
            log.warning("last-seen times lost at shutdown: %s", e.detail)
        try:
            await run_in_threadpool(services.rollouts.offers.flush)
        except DatabaseUnavailableError as e:
            log.warning("rollout offers lost at shutdown: %s", e.detail)
        await run_in_threadpool(services.deltas.shutdown)
        services.storage.close()
        services.db.dispose()


def create_app(settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """A ready-to-serve app. Raises :class:`ConfigurationError` for unusable settings (bad key files …).

    `clock` (monotonic seconds) drives the enrollment rate limits; tests pass one they move by hand."""
    services = build_services(settings, clock=clock)
    app = FastAPI(
        title="OTA model update server",
        version="1",
        summary="Registry, enrollment and update delivery for edge image classifiers.",
        lifespan=lifespan,
        docs_url=None,  # served from the wheel by server.api.routes.docs, not from a CDN
        redoc_url=None,
        redirect_slashes=False,  # a slash redirect's Location would echo whatever Host the client sent
    )
    app.state.services = services
    install_problem_handlers(app, services.metrics, retry_after=settings.retry_after)
    document_problems(app)
    hot_first = (device, blobs, ops, registry, devices, rollouts, trust, docs, dashboard)  # FastAPI matches in order
    for module in hot_first:
        app.include_router(module.router)
    # Added innermost first: an unexpected exception is caught before anything else sees it, and
    # every answer — a 413 from BodyLimit, a 400 for an untrusted Host — gets the security headers
    # and is counted and logged by RequestObserver.
    app.add_middleware(CatchAll, metrics=services.metrics)
    app.add_middleware(BodyLimit, default=settings.max_request_bytes, metrics=services.metrics)
    if settings.trusted_hosts:
        app.add_middleware(TrustedHosts, hosts=settings.trusted_hosts, metrics=services.metrics)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestObserver, metrics=services.metrics, access=services.access)
    return app
