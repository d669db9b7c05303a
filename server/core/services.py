"""Every long-lived service of one server process, built from the settings in one place.

The API reaches the database only through these: each service method that writes opens its session and
commits (routes never do).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import artifact as A

from ..config import Settings
from ..db.session import Database
from ..errors import ConfigurationError
from ..observability import AccessLog, Metrics
from ..storage import Storage, open_storage
from .auth import Authenticator, EnrollmentSecrets
from .dashboard import Dashboard
from .deltas import DeltaService
from .fleet import Fleet
from .housekeeping import Housekeeping
from .offers import Offers
from .publish import Publisher
from .ratelimit import EnrollmentLimiter
from .registry import Registry
from .rollouts import RolloutService
from .security import Signer
from .seen import SeenBuffer
from .trust import TrustService
from .view import RegistryView


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    metrics: Metrics
    access: AccessLog
    signer: Signer
    view: RegistryView
    seen: SeenBuffer
    deltas: DeltaService
    offers: Offers
    publisher: Publisher
    registry: Registry
    fleet: Fleet
    auth: Authenticator
    rollouts: RolloutService
    dashboard: Dashboard
    trust: TrustService
    enrollment_limiter: EnrollmentLimiter
    housekeeping: Housekeeping | None = None  # OTA_GC_INTERVAL_SECONDS > 0: `ota-server gc` inside `serve`


def trust_policy(settings: Settings) -> A.TrustPolicy | None:
    """The publisher keys uploads must be signed with; None when none are configured (development)."""
    if not settings.publisher_keys:
        return None
    try:
        keys = [A.load_public_key(path) for path in settings.publisher_keys]
        return A.TrustPolicy.of(keys, threshold=settings.publisher_threshold)
    except A.KeyFileError as e:
        raise ConfigurationError(f"OTA_PUBLISHER_KEYS: {e}") from e
    except ValueError as e:
        raise ConfigurationError(f"OTA_PUBLISHER_THRESHOLD: {e}") from e


def enrollment_limiter(settings: Settings, clock: Callable[[], float] = time.monotonic) -> EnrollmentLimiter:
    return EnrollmentLimiter(
        rate=settings.enroll_rate,
        burst=settings.enroll_burst,
        global_rate=settings.enroll_global_rate,
        global_burst=settings.enroll_global_burst,
        max_addresses=settings.enroll_tracked_addresses,
        clock=clock,
    )


def build_services(settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> Services:
    """Every service of one process. `clock` (monotonic seconds) drives the rate limits: tests move it."""
    metrics = Metrics()
    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        connect_timeout=settings.db_connect_timeout,
        pool_timeout=settings.db_pool_timeout,
        statement_timeout=settings.db_statement_timeout,
    )
    storage = open_storage(settings)
    signer = Signer(
        settings.secret_key.get_secret_value(),
        previous=[(p.secret.get_secret_value(), p.until) for p in settings.previous_secret_keys],
    )
    view = RegistryView(db, interval=settings.cache_seconds)
    deltas = DeltaService(
        db,
        storage,
        metrics,
        max_ratio=settings.delta_max_ratio,
        workers=settings.delta_workers,
        claim_timeout=settings.delta_claim_timeout,
    )
    offers = Offers(
        db,
        storage,
        signer,
        deltas,
        metrics,
        poll_interval=settings.poll_interval,
        poll_jitter=settings.poll_jitter,
        url_seconds=settings.download_url_seconds,
        max_ratio=settings.delta_max_ratio,
    )
    trust = TrustService(db, fallback=trust_policy(settings), interval=settings.cache_seconds)
    rollouts = RolloutService(
        db,
        metrics,
        deltas,
        on_change=view.refresh,
        eval_seconds=settings.rollout_eval_seconds,
        flush_seconds=settings.seen_flush_seconds,
        revocations=trust.revocations,
    )

    def revoked() -> None:  # versions condemned by a revoked key: abort their rollouts, stop offering them here
        rollouts.evaluate_once()
        view.refresh()

    trust.on_revoked = revoked
    return Services(
        settings=settings,
        db=db,
        storage=storage,
        metrics=metrics,
        access=AccessLog(),
        signer=signer,
        view=view,
        seen=SeenBuffer(db, interval=settings.seen_flush_seconds),
        deltas=deltas,
        offers=offers,
        publisher=Publisher(db, storage, trust.publish_policy, max_model_bytes=settings.max_model_bytes),
        registry=Registry(db),
        fleet=Fleet(db, signer, on_events=rollouts.record_events, token_seconds=settings.device_token_seconds),
        auth=Authenticator(
            db,
            signer,
            view,
            bootstrap_token=settings.admin_token.get_secret_value(),
            enrollment=EnrollmentSecrets(
                settings.enrollment_secret.get_secret_value(),
                previous=[(p.secret.get_secret_value(), p.until) for p in settings.previous_enrollment_secrets],
            ),
        ),
        rollouts=rollouts,
        dashboard=Dashboard(db, view, rollouts, poll_interval=settings.poll_interval),
        trust=trust,
        enrollment_limiter=enrollment_limiter(settings, clock),
        housekeeping=None
        if settings.gc_interval_seconds == 0
        else Housekeeping(
            db,
            storage,
            interval=settings.gc_interval_seconds,
            grace_seconds=settings.gc_grace_seconds,
            retention_days=settings.event_retention_days,
        ),
    )
