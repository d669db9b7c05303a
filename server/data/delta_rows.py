"""Delta rows: the cross-process claim that a (model, from, to) delta is being, or has been, built.

The unique constraint on (model_id, from_version, to_version) is the lock: whoever inserts the row
builds the delta. A claim whose builder died (its `claimed_at` older than the claim timeout) is
taken over with a compare-and-set on `claimed_at`, so two processes can never both take it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db.models import Delta
from ..db.session import utcnow
from ._upsert import insert_ignore

PENDING, READY, OVERSIZE, FAILED, COLLECTED = "pending", "ready", "oversize", "failed", "collected"
FINAL = frozenset({READY, OVERSIZE, FAILED, COLLECTED})  # collected: the storage GC deleted its blob


def get_delta(session: Session, *, model_id: int, from_version: int, to_version: int) -> Delta | None:
    return session.scalars(
        select(Delta).where(
            Delta.model_id == model_id, Delta.from_version == from_version, Delta.to_version == to_version
        )
    ).one_or_none()


def list_deltas(session: Session, *, model_id: int, to_version: int) -> list[Delta]:
    return list(
        session.scalars(
            select(Delta)
            .where(Delta.model_id == model_id, Delta.to_version == to_version)
            .order_by(Delta.from_version.desc())
        )
    )


def claim_delta(
    session: Session, *, model_id: int, from_version: int, to_version: int, claimer: str, stale_before: datetime
) -> bool:
    """Try to become the one builder of this delta; True if this call holds the claim (commit it at once)."""
    now = utcnow()
    values = {
        "model_id": model_id,
        "from_version": from_version,
        "to_version": to_version,
        "status": PENDING,
        "claimed_by": claimer,
        "claimed_at": now,
    }
    if insert_ignore(session, Delta.__table__, values):  # type: ignore[arg-type]
        return True
    row = get_delta(session, model_id=model_id, from_version=from_version, to_version=to_version)
    if row is None or row.status != PENDING or row.claimed_at >= stale_before:
        return False
    taken = session.execute(
        update(Delta)
        .where(
            Delta.id == row.id,
            Delta.status == PENDING,
            Delta.claimed_by == row.claimed_by,
            Delta.claimed_at == row.claimed_at,
        )
        .values(claimed_by=claimer, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]


def finish_delta(
    session: Session,
    *,
    model_id: int,
    from_version: int,
    to_version: int,
    claimer: str,
    status: str,
    sha256: str | None = None,
    length: int | None = None,
    error: str | None = None,
) -> bool:
    """Record the outcome, only if `claimer` still holds the claim; True if it did."""
    done = session.execute(
        update(Delta)
        .where(
            Delta.model_id == model_id,
            Delta.from_version == from_version,
            Delta.to_version == to_version,
            Delta.status == PENDING,
            Delta.claimed_by == claimer,
        )
        .values(status=status, sha256=sha256, length=length, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
