"""Admin tokens (stored as sha256 digests only) and signed-out dashboard sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..db.models import AdminToken, RevokedSession
from ..db.session import utcnow


def create_admin_token(session: Session, *, name: str, token_hash: str) -> AdminToken:
    token = AdminToken(name=name, token_hash=token_hash, created_at=utcnow())
    session.add(token)
    session.flush()
    return token


def admin_token_by_hash(session: Session, *, token_hash: str) -> AdminToken | None:
    """The live (not revoked) admin token with this digest."""
    return session.scalars(
        select(AdminToken).where(AdminToken.token_hash == token_hash, AdminToken.revoked_at.is_(None))
    ).one_or_none()


def get_admin_token(session: Session, *, name: str) -> AdminToken | None:
    return session.scalars(select(AdminToken).where(AdminToken.name == name)).one_or_none()


def list_admin_tokens(session: Session) -> list[AdminToken]:
    return list(session.scalars(select(AdminToken).order_by(AdminToken.name)))


def revoke_admin_token(session: Session, *, token: AdminToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()


def admin_token_live(session: Session, *, name: str) -> bool:
    """A minted admin token of this name exists and is not revoked."""
    return (
        session.scalar(select(AdminToken.id).where(AdminToken.name == name, AdminToken.revoked_at.is_(None)))
        is not None
    )


def revoke_session(session: Session, *, sid: str, expires_at: datetime) -> None:
    """List a signed-out session (signing out twice is harmless); sessions past their expiry are purged."""
    session.execute(delete(RevokedSession).where(RevokedSession.expires_at < utcnow()))
    if session.get(RevokedSession, sid) is None:
        session.add(RevokedSession(sid=sid, expires_at=expires_at))
    session.flush()


def session_revoked(session: Session, *, sid: str) -> bool:
    return session.get(RevokedSession, sid) is not None
