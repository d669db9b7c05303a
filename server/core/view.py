"""Each process's view of what the registry offers and which device tokens are revoked.

The update poll answers from this in-memory snapshot instead of querying the database. Per model
it holds the baseline (what every device outside a rollout is offered) and the offering rollout, if
any (its version, current stage and percentage, and the devices its selector matches), so that
the poll decides a device's cohort by arithmetic alone. It changes only when someone rolls out,
revokes or a rollout moves, and is reloaded (one query for the baselines, one for the rollouts and
one per rollout with a selector, one for the published version numbers (the only delta bases a
poll may ask for), plus a count of revoked tokens) every ``OTA_CACHE_SECONDS``. The
process that makes the change reloads at once; every other process within one interval, and
the revoke/delete endpoints wait out :attr:`RegistryView.propagation_delay` before answering, so
that once they return *no* process offers the revoked version or accepts the revoked token.

If the database stops answering, the snapshot ages; past ``max_age`` the poll answers 503 instead
of offering from stale data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..data import devices as device_data
from ..data import registry as registry_data
from ..data.registry import Head
from ..db.session import Database
from ..errors import DatabaseUnavailableError
from .loops import refresh_forever
from .rollout_offers import PollRollout, poll_rollouts

log = logging.getLogger("ota.registry")


@dataclass(frozen=True)
class Snapshot:
    heads: Mapping[str, Head]  # model → its baseline, unless revoked
    revoked_tokens: frozenset[str]
    rollouts: Mapping[str, PollRollout] = field(default_factory=dict)  # model → its offering rollout
    versions: Mapping[int, frozenset[int]] = field(default_factory=dict)  # model id → its published versions
    loaded_at: float = field(default_factory=time.monotonic)  # when the loading query began


class RegistryView:
    def __init__(self, db: Database, *, interval: float) -> None:
        self.db = db
        self.interval = interval
        self.max_age = max(5.0, 5 * interval)
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    @property
    def propagation_delay(self) -> float:
        """How long after a commit until every process's view must include it."""
        return 2 * self.interval

    def current(self) -> Snapshot:
        """The snapshot, or :class:`DatabaseUnavailableError` if it is missing or too old to trust."""
        snap = self._snapshot
        if snap is None:
            raise DatabaseUnavailableError("the registry has not been loaded from the database yet")
        age = time.monotonic() - snap.loaded_at
        if age > self.max_age:
            raise DatabaseUnavailableError(f"the database has not answered for {age:.0f} s")
        return snap

    def refresh(self) -> Snapshot:
        """Reload from the database (blocking; run it in a worker thread)."""
        with self._lock:
            started = time.monotonic()
            previous = self._snapshot
            with self.db.session() as session:
                heads = registry_data.offered_heads(session)
                versions = registry_data.published_versions(session)
                rollouts = poll_rollouts(session)
                count = device_data.revoked_token_count(session)
                if previous is not None and len(previous.revoked_tokens) == count:
                    revoked = previous.revoked_tokens
                else:
                    revoked = device_data.revoked_token_ids(session)
            snap = Snapshot(
                heads=heads, revoked_tokens=revoked, rollouts=rollouts, versions=versions, loaded_at=started
            )
            self._snapshot = snap
            return snap

    async def run(self) -> None:
        """Refresh every `interval` seconds until cancelled; failures are logged and retried."""
        await refresh_forever(self.refresh, self.interval, "registry refresh", log=log)
