"""Engine, sessions and the one boundary where database driver errors become server errors.

SQLite (embedded default) and PostgreSQL (production) share every query; the differences live
here: SQLite gets WAL, a busy timeout and foreign keys on every connection, and its parent
directory is created; PostgreSQL gets a bounded pool and connect timeout. A database that cannot be
reached — refused connection, pool exhausted, SQLite locked past its busy timeout — surfaces as
:class:`DatabaseUnavailableError` (503 + Retry-After), never as a 500. A write that breaks a unique
constraint surfaces as :class:`ConstraintViolationError`, for the core service that wrote to judge.
This module, :mod:`server.db.migrate` and :mod:`server.data` are the only ones that import SQLAlchemy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import Session as Session  # re-exported: core annotates with it
from sqlalchemy.orm import sessionmaker
from sqlalchemy.types import TypeDecorator

from ..errors import ConstraintViolationError, DatabaseUnavailableError

# Errors that mean "the database is not there or not answering", as opposed to a bug in a query.
UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive text, so normalise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine configured for the server's access pattern on either database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # Create the directory of the default ./ota-data/ota.db; if that fails, connecting will
            # fail too, and that is reported where it belongs (503, /readyz), not at startup.
            with contextlib.suppress(OSError):
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 5.0})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5.0,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )


class Database:
    """The engine and a session factory; :meth:`session` is the driver-error boundary."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back on error and translates driver errors: 'database down' becomes
        :class:`DatabaseUnavailableError` (503), a unique-constraint violation :class:`ConstraintViolationError`."""
        try:
            with self._sessions() as session:
                yield session
        except sa_exc.IntegrityError as e:
            cause = getattr(e, "orig", None) or e
            raise ConstraintViolationError(
                f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:300]}"
            ) from e
        except UNAVAILABLE as e:
            cause = getattr(e, "orig", None) or e
            raise DatabaseUnavailableError(f"database unavailable ({type(cause).__name__})") from e

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailableError` unless a trivial query answers."""
        with self.session() as session:
            session.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
