"""A database that accepts connections and never answers: every request still ends, in a 503 with Retry-After.

The database is a TCP listener on 127.0.0.1 that accepts every connection and never sends a byte —
what a hung PostgreSQL, a full listen queue behind a proxy or a half-dead network path look like
to the server. Without timeouts, each request that needs a pooled connection (``/readyz`` included)
would hang for as long as the TCP connection lives. The pytest timeout is the hang guard; the
tests assert only what a client sees.
"""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server import Settings, create_app
from server.core.security import DeviceIdentity, Signer

from .conftest import ADMIN, ADMIN_TOKEN, ENROLLMENT_SECRET, assert_problem, bearer

SECRET_KEY = "test-secret-key-0123456789abcdef"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def black_hole() -> Iterator[int]:
    """A port whose listener accepts connections, holds them open and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture()
def client(black_hole: int, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"postgresql+psycopg://ota@127.0.0.1:{black_hole}/ota",
        storage_url=f"file://{tmp_path / 'blobs'}",
        admin_token=ADMIN_TOKEN,
        enrollment_secret=ENROLLMENT_SECRET,
        secret_key=SECRET_KEY,
        db_connect_timeout=2,
        db_pool_timeout=2,
        db_pool_size=1,
        cache_seconds=0.05,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_blackholed_database_readyz_answers_503_with_retry_after(client: TestClient) -> None:
    r = client.get("/readyz")
    doc = assert_problem(r, 503, "not-ready")
    assert r.headers["retry-after"]
    assert doc["checks"]["storage"] == "ok"
    assert "database unavailable" in doc["checks"]["database"]


def test_blackholed_database_every_kind_of_request_ends_in_503(client: TestClient) -> None:
    device = bearer(Signer(SECRET_KEY).device_token(DeviceIdentity(1, "cam-1", "shapes", "0" * 32)))
    answers = [
        client.get("/v1/models", headers=ADMIN),
        client.post("/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes"}),
        client.get("/v1/device/update?current_version=0", headers=device),
        client.post("/v1/device/events", json=[{"type": "verified", "version": 1}], headers=device),
    ]
    for r in answers:
        assert_problem(r, 503)
        assert r.headers["retry-after"]


def test_blackholed_database_does_not_starve_the_pool(client: TestClient) -> None:
    """Connections stuck on the black hole are given up, not kept: the tenth request answers like the first."""
    for _ in range(10):
        assert_problem(client.get("/v1/models", headers=ADMIN), 503, "database-unavailable")
    assert client.get("/healthz").status_code == 200
