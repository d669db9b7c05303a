"""Admin tokens (stored as sha256 digests only)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import AdminToken
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
