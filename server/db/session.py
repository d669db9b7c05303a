"""Engine, sessions and the one boundary where database driver errors become server errors.

SQLite (embedded default) and PostgreSQL (production) share every query; the differences live
here: SQLite gets WAL, a busy timeout and foreign keys on every connection, and its parent
directory is created; PostgreSQL gets a bounded pool with a wait limit, a connect timeout, TCP
keepalives, a TCP user timeout and (for the serving process) a statement timeout with a client-side
deadline on every round trip (:mod:`server.db.deadline`), so that a database that accepts
connections but never answers — black-holed, hung, stopped, partitioned — costs a request a few
seconds and a 503, never a hung worker. A database that cannot be
reached — refused connection, pool exhausted, SQLite locked past its busy timeout — surfaces as
:class:`DatabaseUnavailableError` (503 + Retry-After), never as a 500. A write that breaks a unique
constraint surfaces as :class:`ConstraintViolationError`, for the core service that wrote to judge.
This module, :mod:`server.db.migrate` and :mod:`server.data` are the only ones that import SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import logging
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

log = logging.getLogger(__name__)

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


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    connect_timeout: int = 5,
    pool_timeout: float = 5.0,
    statement_timeout: float | None = None,
    client_deadline: bool = True,
) -> Engine:
    """An engine configured for the server's access pattern on either database.

    `statement_timeout` (seconds) bounds each statement on the server side and, as the TCP user
    timeout, how long sent data may stay unacknowledged; None (migrations) leaves statements unbounded.
    On PostgreSQL it also sets the client's deadline for any answer, `statement_timeout` +
    :data:`server.db.deadline.MARGIN` (`client_deadline=False` leaves it out, to measure its cost).
    """
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
        # connect_timeout covers a server that accepts the TCP connection and never answers (the
        # handshake waits on it); keepalives notice a peer that vanished under an idle pooled
        # connection; tcp_user_timeout fails a send the peer never acknowledges.
        connect_args.update(
            connect_timeout=connect_timeout,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
            tcp_user_timeout=int((statement_timeout or 30) * 1000),
        )
        if statement_timeout is not None:  # added to the URL's own options (a search_path, say), never replacing them
            own = parsed.query.get("options", "")
            own = own if isinstance(own, str) else " ".join(own)
            connect_args["options"] = f"{own} -c statement_timeout={int(statement_timeout * 1000)}".strip()
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    if statement_timeout is not None and client_deadline and engine.dialect.driver == "psycopg":
        _answer_within(engine, statement_timeout)
    return engine


def _answer_within(engine: Engine, statement_timeout: float) -> None:
    """Open the engine's connections as :class:`server.db.deadline.DeadlineConnection`: every
    statement, commit, rollback and pre-ping gets an answer within `statement_timeout` + MARGIN, or
    the connection is closed and the pool discards it (a 503 for the request)."""
    from . import deadline  # psycopg: imported for PostgreSQL only

    why_not = deadline.unsupported_reason()
    if why_not is not None:
        log.warning("%s: a database that stops answering holds a request until its connection dies", why_not)
        return
    seconds = statement_timeout + deadline.MARGIN

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return deadline.connect(seconds, *cargs, **cparams)


class Database:
    """The engine and a session factory; :meth:`session` is the driver-error boundary."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: int = 5,
        pool_timeout: float = 5.0,
        statement_timeout: float | None = None,
    ) -> None:
        self.url = url
        self.engine = make_engine(
            url,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
            statement_timeout=statement_timeout,
        )
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
