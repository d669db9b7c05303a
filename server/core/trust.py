"""The root of trust on the server: operators upload root and keys documents, devices read the chain.

The server is not a source of trust for devices (they verify the chain from the root they were
given), but it refuses what no device would accept, so that an operator's mistake is caught at
upload: a root must be signed by the previous root's threshold and its own, its version must be the
next one, a keys document must be signed by the current root and be newer than the stored one, and
nothing expired is taken (:meth:`artifact.TrustState.update`). Same document again: 200, nothing
stored.

Uploads of artifacts are verified against the latest keys document once there is one (read from
the database at each publish, so that a revocation applies at once in every process); before that,
against ``OTA_PUBLISHER_KEYS`` as before. Storing a keys document that revokes a key also revokes
the versions it condemns (:mod:`server.core.key_revocation`), and so does every start.

The served chain (every root, oldest first, and the latest keys document) is cached in memory and
reloaded every ``OTA_CACHE_SECONDS``: ``GET /v1/trust`` and the poll's ``Ota-Trust-Version`` header
cost no query. A keys document signed by a root that was rotated since is not served (devices that
walked to the new root could not verify it) until one signed by the new root is uploaded; devices
keep the keys document they hold meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

import artifact as A

from ..data import trust as trust_data
from ..db.models import TrustDocument
from ..db.session import Database
from ..errors import ConstraintViolationError, InvalidTrustDocumentError, TrustConflictError
from .key_revocation import Revocations, RevokedVersion, revoke_condemned
from .loops import refresh_forever

log = logging.getLogger("ota.trust")
Kind = Literal["root", "keys"]


@dataclass(frozen=True)
class ServedChain:
    """What `GET /v1/trust` answers: the canonical JSON body and its tag (`r<root>-k<keys>`)."""

    tag: str
    body: bytes

    @property
    def etag(self) -> str:
        return f'"trust-{self.tag}"'


@dataclass(frozen=True)
class Accepted:
    document: A.TrustDocument
    created: bool
    warning: str | None = None
    revoked_versions: tuple[RevokedVersion, ...] = ()  # keys: versions this upload revoked (key_revocation)


def _refusal(e: A.TrustError) -> Exception:
    reason = type(e).__name__
    if isinstance(e, A.TrustRollbackError | A.TrustSkippedVersionError):
        return TrustConflictError(str(e), reason=reason)
    return InvalidTrustDocumentError(str(e), reason=reason)


def _state(root: TrustDocument, keys: TrustDocument | None) -> A.TrustState:
    """Documents read back from the database were verified when they were stored."""
    doc = A.parse_document(keys.body, "keys") if keys is not None else None
    return A.TrustState(A.parse_document(root.body, "root"), doc)


class TrustService:
    def __init__(
        self,
        db: Database,
        *,
        fallback: A.TrustPolicy | None,
        interval: float,
        on_revoked: Callable[[], object] = lambda: None,
    ) -> None:
        self.db = db
        self.fallback = fallback  # OTA_PUBLISHER_KEYS: the policy until a keys document is uploaded
        self.interval = interval
        self.on_revoked = on_revoked  # after versions were revoked: abort their rollouts, reload the view
        self._served: ServedChain | None = None
        self._lock = threading.Lock()

    @property
    def served(self) -> ServedChain | None:
        """The cached chain; None while no root document is stored."""
        return self._served

    def publish_policy(self) -> A.TrustPolicy | None:
        """The policy uploads are verified with: the latest keys document's, else OTA_PUBLISHER_KEYS."""
        with self.db.session() as session:
            root = trust_data.latest_trust_document(session, kind="root")
            keys = trust_data.latest_trust_document(session, kind="keys")
        if root is None or keys is None:
            return self.fallback
        return _state(root, keys).policy()

    def revocations(self) -> Revocations | None:
        """The stored keys document's policy when it revokes a key; None otherwise (blocking)."""
        with self.db.session() as session:
            root = trust_data.latest_trust_document(session, kind="root")
            keys = trust_data.latest_trust_document(session, kind="keys")
        if root is None or keys is None:
            return None
        policy = _state(root, keys).policy()
        if policy is None or not policy.revoked:
            return None
        return Revocations(policy, keys.version)

    def revoke_condemned(self) -> list[RevokedVersion]:
        """Revoke every live version the stored keys document condemns (blocking; idempotent; at
        start and after each keys upload: :mod:`server.core.key_revocation`)."""
        revocations = self.revocations()
        revoked = [] if revocations is None else revoke_condemned(self.db, revocations)
        if revoked:
            self.on_revoked()
        return revoked

    def put(self, kind: Kind, body: bytes, *, by: str, now: datetime | None = None) -> Accepted:
        """Verify `body` against the stored chain and store it (blocking; run it in a worker thread)."""
        moment = now or datetime.now(UTC)
        try:
            accepted = self._verify(kind, body, moment)
        except A.TrustError as e:
            raise _refusal(e) from e
        if accepted.created:
            try:
                with self.db.session() as session:
                    trust_data.add_trust_document(
                        session, kind=kind, version=accepted.document.version, body=accepted.document.to_bytes(), by=by
                    )
                    session.commit()
            except ConstraintViolationError:  # a concurrent upload of the same version won
                accepted = self._verify_again(kind, body, moment)
            else:
                self.refresh()
        if kind == "keys":  # also for the same document again: a retry finishes an interrupted sweep
            accepted = replace(accepted, revoked_versions=tuple(self.revoke_condemned()))
        return accepted

    def _verify_again(self, kind: Kind, body: bytes, moment: datetime) -> Accepted:
        try:
            accepted = self._verify(kind, body, moment)
        except A.TrustError as e:
            raise _refusal(e) from e
        if accepted.created:
            raise TrustConflictError(f"another {kind} document was stored meanwhile; retry", reason="Concurrent")
        return accepted

    def _verify(self, kind: Kind, body: bytes, moment: datetime) -> Accepted:
        with self.db.session() as session:
            root = trust_data.latest_trust_document(session, kind="root")
            keys = trust_data.latest_trust_document(session, kind="keys")
        if kind == "root":
            if root is None:
                state = A.TrustState.from_root(body)
                state.root.check_fresh(moment)
                return Accepted(state.root, created=True)
            held = _state(root, keys)
            new = held.update_root([A.parse_document(body, "root").to_json()], now=moment)
            created = new.root is not held.root
            warning = None
            if created and keys is not None and not _signed_by(new, keys):
                warning = (
                    f"keys v{keys.version} is not signed by the new root's threshold: sign a new keys document "
                    "with the new root keys and upload it (devices keep their keys document until then)"
                )
            return Accepted(new.root, created=created, warning=warning)
        if root is None:
            raise TrustConflictError(
                "upload a root document (PUT /v1/trust/root) before a keys document", reason="NoRoot"
            )
        held = _state(root, keys)
        new = held.update_keys(body, now=moment)
        assert new.keys is not None
        return Accepted(new.keys, created=new.keys is not held.keys)

    def refresh(self) -> ServedChain | None:
        """Reload the served chain from the database (blocking)."""
        with self._lock:
            with self.db.session() as session:
                roots = trust_data.trust_documents(session, kind="root")
                keys = trust_data.latest_trust_document(session, kind="keys")
            if not roots:
                self._served = None
                return None
            latest = A.TrustState(A.parse_document(roots[-1].body, "root"))
            served_keys = keys if keys is not None and _signed_by(latest, keys) else None
            chain = A.TrustChain(
                tuple(A.parse_document(r.body, "root").to_json() for r in roots),
                None if served_keys is None else A.parse_document(served_keys.body, "keys").to_json(),
            )
            tag = f"r{roots[-1].version}-k{0 if served_keys is None else served_keys.version}"
            self._served = ServedChain(tag, A.canonical_json({"tag": tag, **chain.to_json()}))
            return self._served

    async def run(self) -> None:
        """Reload every `interval` seconds until cancelled (other processes' uploads arrive this way)."""
        await refresh_forever(self.refresh, self.interval, "trust chain refresh", log=log)


def _signed_by(state: A.TrustState, keys: TrustDocument) -> bool:
    """Whether the stored keys document verifies under `state`'s root (signatures only: it was fresh when stored)."""
    try:
        A.TrustState(state.root).update_keys(keys.body, now=keys.uploaded_at)
    except A.TrustError:
        return False
    return True
