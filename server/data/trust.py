"""Root and keys documents of the root of trust, stored verbatim (see :mod:`server.core.trust`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import TrustDocument


def trust_documents(session: Session, *, kind: str) -> list[TrustDocument]:
    """Every stored document of `kind`, oldest version first."""
    return list(
        session.scalars(select(TrustDocument).where(TrustDocument.kind == kind).order_by(TrustDocument.version))
    )


def latest_trust_document(session: Session, *, kind: str) -> TrustDocument | None:
    return session.scalars(
        select(TrustDocument).where(TrustDocument.kind == kind).order_by(TrustDocument.version.desc()).limit(1)
    ).one_or_none()


def add_trust_document(session: Session, *, kind: str, version: int, body: bytes, by: str) -> TrustDocument:
    row = TrustDocument(kind=kind, version=version, body=body, uploaded_by=by[:64])
    session.add(row)
    session.flush()
    return row
