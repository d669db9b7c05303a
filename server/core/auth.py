"""Who is calling: the admin and device authenticators the API dependencies use, and admin tokens.

Routes never check credentials themselves; :mod:`server.api.deps` calls these and turns the
answer into 401 (nobody we know) or 403 (someone we know, on the wrong side: a device token on an
admin endpoint, an admin token on a device endpoint). A credential we issued that is no longer
good — a device token past its expiry, or signed with a secret key retired since — is a 401 whose
detail says which, so that an operator reading the agent's log knows what happened.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from ..data import admin as admin_data
from ..db.models import AdminToken
from ..db.session import Database
from ..errors import AuthenticationError, ConstraintViolationError, EnrollmentRefusedError
from .security import (
    ADMIN_PREFIX,
    DashboardSession,
    DeviceIdentity,
    Signer,
    digest,
    format_moment,
    new_admin_token,
    secret_equals,
)
from .view import RegistryView

BOOTSTRAP = "bootstrap"
VERIFIED_CACHE = 200_000  # device tokens whose MAC checked out: ~50 MB at most, one per device of a big fleet


class EnrollmentSecrets:
    """``OTA_ENROLLMENT_SECRET`` and the previous ones, each accepted until its retirement moment."""

    def __init__(self, current: str, previous: Sequence[tuple[str, datetime]] = ()) -> None:
        self._current = current
        self._previous = list(previous)

    def check(self, presented: str, *, now: float | None = None) -> None:
        """Return if `presented` enrolls; else :class:`EnrollmentRefusedError` saying why."""
        if secret_equals(presented, self._current):
            return
        moment = time.time() if now is None else now
        for secret, until in self._previous:
            if secret_equals(presented, secret):
                if until.timestamp() > moment:
                    return
                raise EnrollmentRefusedError(
                    f"the enrollment secret was retired at {format_moment(until)}; ask the operator for the current one"
                )
        raise EnrollmentRefusedError("the enrollment secret is wrong")


class Authenticator:
    def __init__(
        self,
        db: Database,
        signer: Signer,
        view: RegistryView,
        *,
        bootstrap_token: str,
        enrollment: EnrollmentSecrets | None = None,
    ) -> None:
        self.db = db
        self.signer = signer
        self.view = view
        self.enrollment = enrollment or EnrollmentSecrets("")
        self._bootstrap = bootstrap_token
        # token → identity for tokens whose MAC already verified. A token's identity never changes
        # (revocation is checked on every request, below), so this only saves recomputing an HMAC
        # on each poll of each device. Failures are never cached; a full cache starts over.
        self._verified: dict[str, DeviceIdentity] = {}

    def admin(self, token: str) -> str | None:
        """The admin token's name, or None. Blocking: minted tokens are looked up by digest."""
        if self._bootstrap and secret_equals(token, self._bootstrap):
            return BOOTSTRAP
        if not token.startswith(ADMIN_PREFIX):
            return None
        with self.db.session() as session:
            row = admin_data.admin_token_by_hash(session, token_hash=digest(token))
            return row.name if row is not None else None

    def device(self, token: str) -> DeviceIdentity | None:
        """The device a token was issued to, unless it was revoked. No I/O (see :mod:`server.core.security`).

        Raises :class:`AuthenticationError` for a token we issued that expired or whose key was
        retired, and :class:`DatabaseUnavailableError` when the revocation list is too stale to trust.
        """
        identity = self._verified.get(token)
        if identity is None:
            identity = self.signer.read_device_token(token)
            if identity is None:
                return None
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[token] = identity
        if identity.token_id in self.view.current().revoked_tokens:
            return None
        now = time.time()
        retired = self.signer.retired_at(identity.kid, now=now)
        if retired is not None:
            raise AuthenticationError(
                f"this device token was signed with a secret key retired at {format_moment(retired)}; "
                "the device must enroll again (with its enrollment secret and this token as previous_token)"
            )
        if identity.expires is not None and identity.expires <= now:
            raise AuthenticationError(
                f"this device token expired at {format_moment(identity.expires)}; agents renew theirs "
                "(POST /v1/device/token) before then — enroll again with it as previous_token"
            )
        return identity

    def dashboard_session(self, cookie: str) -> DashboardSession | None:
        """The session a dashboard cookie names: signed with a key in use, not expired, not signed
        out, and its minted admin token not revoked since. Blocking (one or two primary-key lookups)."""
        session = self.signer.read_session_cookie(cookie)
        if session is None:
            return None
        with self.db.session() as db:
            if admin_data.session_revoked(db, sid=session.sid):
                return None
            if session.admin != BOOTSTRAP and not admin_data.admin_token_live(db, name=session.admin):
                return None
        return session

    def end_session(self, session: DashboardSession) -> None:
        """Sign out: the cookie is refused from now on, by every process (listed until it would expire)."""
        try:
            with self.db.session() as db:
                admin_data.revoke_session(db, sid=session.sid, expires_at=datetime.fromtimestamp(session.expires, UTC))
                db.commit()
        except ConstraintViolationError:
            pass  # a concurrent sign-out of the same session listed it first


# -- minted admin tokens (`ota-server create-token | revoke-token | list-tokens`) ------------------


def create_admin_token(db: Database, *, name: str) -> str | None:
    """Mint a token named `name` (only its digest is stored); None if that name is taken."""
    token = new_admin_token()
    try:
        with db.session() as session:
            admin_data.create_admin_token(session, name=name, token_hash=digest(token))
            session.commit()
    except ConstraintViolationError:
        return None
    return token


def revoke_admin_token(db: Database, *, name: str) -> bool:
    """Revoke the token named `name`; False if there is none (revoking twice is harmless)."""
    with db.session() as session:
        token = admin_data.get_admin_token(session, name=name)
        if token is None:
            return False
        admin_data.revoke_admin_token(session, token=token)
        session.commit()
        return True


def list_admin_tokens(db: Database) -> list[AdminToken]:
    with db.session() as session:
        return admin_data.list_admin_tokens(session)
