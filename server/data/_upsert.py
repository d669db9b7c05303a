"""Upserts for both databases (`ON CONFLICT DO NOTHING | DO UPDATE`): the one dialect switch the data layer needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """Insert a row unless it collides with a unique constraint; True if this call inserted it.

    The answer comes from RETURNING, not from `rowcount`: through SQLAlchemy on PostgreSQL a
    skipped `ON CONFLICT DO NOTHING` insert still reports a rowcount of 1.
    """
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    pk = next(iter(table.primary_key.columns))
    stmt = module.insert(table).values(**values).on_conflict_do_nothing().returning(pk)
    return session.execute(stmt).first() is not None


def insert_many_ignore(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows, skipping those that collide with a unique constraint (one statement)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    session.execute(module.insert(table).on_conflict_do_nothing(), rows)


def insert_or_add(session: Session, table: Table, key: dict[str, Any], adds: dict[str, Any]) -> None:
    """Insert a row, or add `adds` to the existing row's columns (one atomic statement on both databases)."""
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(table).values(**key, **adds)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key), set_={name: table.c[name] + stmt.excluded[name] for name in adds}
    )
    session.execute(stmt)


def insert_or_fold(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    key: Sequence[str],
    add: Sequence[str] = (),
    least: Sequence[str] = (),
    greatest: Sequence[str] = (),
) -> None:
    """Insert rows, or fold each into its existing row: columns in `add` summed, `least`/`greatest` kept
    at the minimum/maximum (one cached statement, executed for many rows; both databases)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    lo, hi = (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
    stmt = module.insert(table)
    set_ = {name: table.c[name] + stmt.excluded[name] for name in add}
    set_ |= {name: lo(table.c[name], stmt.excluded[name]) for name in least}
    set_ |= {name: hi(table.c[name], stmt.excluded[name]) for name in greatest}
    session.execute(stmt.on_conflict_do_update(index_elements=list(key), set_=set_), rows)
