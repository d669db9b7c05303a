"""A PostgreSQL that stops answering on connections already in the pool: the request still ends in a
503 with Retry-After, and the server serves again once the database is back (finding 23).

The database is the real PostgreSQL on 127.0.0.1:5432 behind a TCP proxy in the test. Frozen, the
proxy stops forwarding and stops accepting but keeps every socket open: its kernel still completes
handshakes and acknowledges bytes, nobody answers — what a stopped (SIGSTOP) PostgreSQL or a hung
proxy looks like. No TCP or server-side timeout notices that; only the server's own deadline for an
answer (server/db/deadline.py) does. The pytest timeout is the last hang guard; the tests assert
what a client sees (and, through the proxy, that broken connections are replaced by new ones).
"""

from __future__ import annotations

import select
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server import Settings, create_app
from server.db.deadline import MARGIN
from server.db.session import Database
from server.errors import DatabaseUnavailableError
from tests.support import wait_for

from .conftest import ADMIN, ADMIN_TOKEN, ENROLLMENT_SECRET, assert_problem

pytestmark = pytest.mark.timeout(180)

STATEMENT_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2
# What one request may take on a frozen database: its pre-ping or statement waits for the deadline,
# the pool tries one new connection, which waits for its connect timeout. Many times that is still
# no time next to "until the connection dies" (hours with TCP keepalives answered by the kernel).
REQUEST_BOUND = 4 * (STATEMENT_TIMEOUT + MARGIN + CONNECT_TIMEOUT)


class FreezableProxy:
    """127.0.0.1:`port` forwards to PostgreSQL until :meth:`freeze`, and again after :meth:`thaw`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0  # connections ever forwarded
        self._peers: dict[socket.socket, socket.socket] = {}
        self._frozen = threading.Event()
        self._idle = threading.Event()  # set by the forwarding thread once it honours a freeze
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freezable-proxy", daemon=True)
        self._thread.start()

    @property
    def open_connections(self) -> int:
        return len(self._peers) // 2

    def freeze(self) -> None:
        """Stop forwarding and accepting; every socket stays open. Returns once nothing moves."""
        self._idle.clear()
        self._frozen.set()
        assert self._idle.wait(10), "the proxy did not freeze"

    def thaw(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(10)
        self.listener.close()
        for sock in list(self._peers):
            sock.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            if self._frozen.is_set():
                self._idle.set()
                self._closed.wait(0.02)
                continue
            ready, _, _ = select.select([self.listener, *self._peers], [], [], 0.05)
            for sock in ready:
                if sock is self.listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self._peers[client], self._peers[server] = server, client
        self.accepted += 1

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        for s in (sock, peer):  # one side closed: close the other, as a proxy does
            self._peers.pop(s, None)
            s.close()


@pytest.fixture()
def proxy() -> Iterator[FreezableProxy]:
    p = FreezableProxy(("127.0.0.1", 5432))
    try:
        yield p
    finally:
        p.close()


def _through(url: str, proxy: FreezableProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    """Run `call` on a thread: a request that hangs must fail the test, not stop it."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_database_frozen_under_pooled_connections_answers_503_and_serves_again_after_thaw(
    pg_url: str, proxy: FreezableProxy, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=_through(pg_url, proxy),
        storage_url=f"file://{tmp_path / 'blobs'}",
        admin_token=ADMIN_TOKEN,
        enrollment_secret=ENROLLMENT_SECRET,
        secret_key="test-secret-key-0123456789abcdef",
        db_statement_timeout=STATEMENT_TIMEOUT,
        db_connect_timeout=CONNECT_TIMEOUT,
        db_pool_timeout=2,
        db_pool_size=2,
        cache_seconds=0.05,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/models", headers=ADMIN).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert proxy.open_connections >= 1  # the pool holds connections through the proxy
        before = proxy.accepted
        proxy.freeze()

        requests = [lambda: client.get("/v1/models", headers=ADMIN), lambda: client.get("/readyz")]
        for request in requests:
            thread, out = _in_thread(request)
            thread.join(REQUEST_BOUND)
            assert not thread.is_alive(), f"a request waited over {REQUEST_BOUND:g} s on the frozen database"
            assert_problem(out[0], 503)
            assert out[0].headers["retry-after"]

        proxy.thaw()
        wait_for(
            lambda: client.get("/v1/models", headers=ADMIN).status_code == 200,
            REQUEST_BOUND,
            "the server serving again after the database thawed",
        )
        assert client.get("/readyz").status_code == 200
        assert proxy.accepted > before  # broken connections were dropped, new ones opened


def test_statement_inside_a_transaction_on_a_frozen_database_is_unavailable_not_a_hang(
    pg_url: str, proxy: FreezableProxy
) -> None:
    """No pre-ping in between: the connection is already checked out when the database stops."""
    db = Database(
        _through(pg_url, proxy),
        pool_size=1,
        connect_timeout=CONNECT_TIMEOUT,
        pool_timeout=2,
        statement_timeout=STATEMENT_TIMEOUT,
    )
    try:

        def frozen_mid_transaction() -> str:
            try:
                with db.session() as session:
                    assert session.execute(text("SELECT 1")).scalar_one() == 1
                    proxy.freeze()
                    session.execute(text("SELECT 2"))
            except DatabaseUnavailableError as e:
                return str(e)
            return "the statement answered"

        thread, out = _in_thread(frozen_mid_transaction)
        thread.join(REQUEST_BOUND)
        assert not thread.is_alive(), f"a statement waited over {REQUEST_BOUND:g} s on the frozen database"
        assert out == ["database unavailable (OperationalError)"]
        proxy.thaw()
        db.ping()  # the broken connection was discarded: a new one answers
    finally:
        proxy.thaw()
        db.dispose()


def test_a_slow_statement_is_cancelled_by_postgresql_first_and_keeps_its_connection(
    pg_url: str, proxy: FreezableProxy
) -> None:
    """A statement that is merely slow is stopped by PostgreSQL's statement_timeout, before the
    client's deadline: the connection stays in the pool (no new connection through the proxy)."""
    db = Database(_through(pg_url, proxy), pool_size=1, statement_timeout=STATEMENT_TIMEOUT)
    try:
        db.ping()
        opened = proxy.accepted
        with pytest.raises(DatabaseUnavailableError, match="QueryCanceled"), db.session() as session:
            session.execute(text("SELECT pg_sleep(:s)"), {"s": STATEMENT_TIMEOUT + MARGIN + 2})
        db.ping()
        assert proxy.accepted == opened
    finally:
        db.dispose()
