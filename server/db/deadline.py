"""A client-side deadline on every PostgreSQL round trip (finding 23).

The server-side `statement_timeout` bounds a statement PostgreSQL is running, and the TCP timeouts
bound a peer whose kernel stopped acknowledging. Neither bounds a database whose kernel still
acknowledges but which never answers — a stopped (SIGSTOP) PostgreSQL, a hung proxy in between —
once a pooled connection to it exists: a request on it would wait as long as the connection lives.

:class:`DeadlineConnection` is psycopg's connection with a deadline on every wait for the server: a
statement, a commit or rollback, the pool's pre-ping, a transaction setting. psycopg (3.3 and later)
waits for the socket in its own poll loop, and given a timeout it stops waiting once the time is up
(`psycopg.errors._WaitTimeout`; its wait loop owns the socket, so nothing else has to interrupt a
blocked read: no watchdog thread, no timer, no second file descriptor). The protocol is then
abandoned half-way, so the connection is closed at once: SQLAlchemy sees a closed connection, takes
the error for a disconnect and discards the connection from its pool, and the request ends in the
503 + Retry-After of any unavailable database (:class:`server.errors.DatabaseUnavailableError`).
Per round trip this costs one Python call and a deadline in psycopg's wait loop
(`python -m bench.db_deadline`).

The deadline is `statement_timeout` + :data:`MARGIN`: a slow statement is cancelled by the server at
`statement_timeout`, which answers with its own error and keeps the connection; only a database that
cannot answer at all reaches the client's deadline. Importing this module needs psycopg: it is
imported only for PostgreSQL URLs. SQLite needs no deadline: it runs inside the process, with no
network in between, and its locks are bounded by its busy timeout.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen

log = logging.getLogger(__name__)

RV = TypeVar("RV")

MARGIN = 2.0  # seconds past the server's own statement_timeout before the client gives a connection up

try:  # psycopg's own (private) exception for an expired wait; its wait takes a timeout since 3.3
    from psycopg.errors import _WaitTimeout as WaitTimeout
except ImportError:  # pragma: no cover - psycopg before 3.3
    SUPPORTED = False
else:
    SUPPORTED = {"interval", "timeout"} <= set(inspect.signature(psycopg.Connection.wait).parameters)


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits at most :attr:`answer_within` seconds for any answer."""

    answer_within: float | None = None  # set once, right after connecting; None: wait as psycopg does

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        limit = self.answer_within
        if timeout is not None or limit is None:  # a caller's own timeout (notifies, cancel) is its to handle
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, limit)
        except WaitTimeout:
            # The request and its answer are cut half-way: the connection cannot be used again.
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"the database did not answer within {limit:g} s; the connection was closed"
            ) from None


def connect(seconds: float, *args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
    """`psycopg.connect(*args, **kwargs)`, answering within `seconds` from then on."""
    conn = DeadlineConnection.connect(*args, **kwargs)
    conn.answer_within = seconds
    return conn


def unsupported_reason() -> str | None:
    """Why this psycopg cannot have the deadline, or None when it can."""
    if SUPPORTED:
        return None
    return f"psycopg {psycopg.__version__} cannot bound its waits (3.3 and later can)"
