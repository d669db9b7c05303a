"""Maintenance leases: one holder of a named job (``gc``) at a time, across processes and hosts.

A lease is a row with a holder and an expiry. Taking it is an insert, or a compare-and-set over an
expired one; the holder renews it in every transaction of its run, and a run that finds it lost
stops. A holder that died frees the lease when it expires.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db.models import MaintenanceLease
from ._upsert import insert_ignore


def acquire(session: Session, *, name: str, holder: str, until: datetime, now: datetime) -> bool:
    values = {"name": name, "holder": holder, "expires_at": until}
    if insert_ignore(session, MaintenanceLease.__table__, values):  # type: ignore[arg-type]
        return True
    return renew(session, name=name, holder=holder, until=until, now=now, take_expired=True)


def claim(session: Session, *, name: str, holder: str, until: datetime, now: datetime) -> bool:
    """Take the lease only if nobody holds it or it has expired — its own holder included: a lease
    taken this way is a ticket for one run per period, never released, left to expire."""
    values = {"name": name, "holder": holder, "expires_at": until}
    if insert_ignore(session, MaintenanceLease.__table__, values):  # type: ignore[arg-type]
        return True
    result = session.execute(
        update(MaintenanceLease)
        .where(MaintenanceLease.name == name, MaintenanceLease.expires_at < now)
        .values(holder=holder, expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def renew(
    session: Session, *, name: str, holder: str, until: datetime, now: datetime, take_expired: bool = False
) -> bool:
    """Extend the lease if `holder` holds it (or, with `take_expired`, if it has expired); a write either way."""
    held = MaintenanceLease.holder == holder
    result = session.execute(
        update(MaintenanceLease)
        .where(MaintenanceLease.name == name, (held | (MaintenanceLease.expires_at < now)) if take_expired else held)
        .values(holder=holder, expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, *, name: str, holder: str) -> None:
    session.execute(delete(MaintenanceLease).where(MaintenanceLease.name == name, MaintenanceLease.holder == holder))


def current(session: Session, *, name: str) -> MaintenanceLease | None:
    return session.scalars(select(MaintenanceLease).where(MaintenanceLease.name == name)).one_or_none()
