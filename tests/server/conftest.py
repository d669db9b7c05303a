"""Server test fixtures: real databases (SQLite and PostgreSQL), real storage (directory and S3 over HTTP).

Every server test that takes `env` runs once per backend pair:

- ``sqlite-file``, ``postgresql-s3``, ``postgresql-file``, ``sqlite-s3``.

PostgreSQL is the server at 127.0.0.1:5432 (database ``test``, trust auth); each test session
works in its own schema, so parallel runs never collide, and drops it at the end. With ``CI=true``
an unreachable PostgreSQL *fails* the tests; elsewhere they are skipped with the reason. S3 is
moto's standalone server on a free loopback port, reached by real boto3 over HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

with warnings.catch_warnings():  # this Starlette warns about its own test client's transport
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import artifact as A
from bench._common import private_pg_schema  # shared with the poll benchmark
from server import Settings, create_app, upgrade
from server import cli as server_cli
from server.db.models import Base
from tests.support import free_port

from . import helpers

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ENROLLMENT_SECRET = "test-enrollment-secret-0123456789"
BACKENDS = ["sqlite-file", "postgresql-s3", "postgresql-file", "sqlite-s3"]


# -- PostgreSQL ---------------------------------------------------------------------------------


def _pg_reachable() -> str | None:
    import psycopg

    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"):
            return None
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated, private schema in the `test` database."""
    problem = _pg_reachable()
    if problem is not None:
        message = f"PostgreSQL at 127.0.0.1:5432 (database 'test') is unreachable: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " — CI requires it", pytrace=False)
        pytest.skip(message)
    with private_pg_schema(f"ota_test_{os.getpid()}") as url:
        upgrade(url)
        yield url


def truncate_pg(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; each test gets a copy (a fresh database for the price of a file copy)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


# -- keys (signing_key and other_key come from tests/conftest.py) ------------------------------


@pytest.fixture(scope="session")
def publisher_key_file(tmp_path_factory: pytest.TempPathFactory, signing_key: A.SigningKey) -> Path:
    path = tmp_path_factory.mktemp("keys") / "publisher.pub.pem"
    A.save_public_key(signing_key, path)
    return path


# -- the server under test ----------------------------------------------------------------------


@dataclass
class Env:
    """One backend pair: settings for it, and a way to start apps on it."""

    name: str
    database_url: str
    storage_url: str
    s3_endpoint: str | None
    key: A.SigningKey
    base: dict[str, Any]
    clients: list[TestClient] = field(default_factory=list)

    @property
    def database(self) -> str:
        return self.name.split("-")[0]

    @property
    def storage(self) -> str:
        return self.name.split("-")[1]

    def settings(self, **overrides: Any) -> Settings:
        return Settings(**{**self.base, **overrides})

    def client(self, *, clock: Callable[[], float] = time.monotonic, **overrides: Any) -> TestClient:
        """A started app (lifespan entered) on this env; stopped at the end of the test. `clock` drives
        the app's rate limits (a test moves it instead of sleeping)."""
        client = TestClient(create_app(self.settings(**overrides), clock=clock), raise_server_exceptions=False)
        client.__enter__()
        self.clients.append(client)
        return client

    def artifact(self, version: int, **kw: Any) -> bytes:
        return helpers.build_artifact(self.key, version=version, **kw)


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    signing_key: A.SigningKey,
    publisher_key_file: Path,
) -> Iterator[Env]:
    name: str = request.param
    database, storage = name.split("-")
    if database == "sqlite":
        db_file = tmp_path / "ota.db"
        shutil.copy(sqlite_template, db_file)
        database_url = f"sqlite:///{db_file}"
    else:
        database_url = request.getfixturevalue("pg_url")
        truncate_pg(database_url)
    s3_endpoint = None
    if storage == "file":
        storage_url = f"file://{tmp_path / 'blobs'}"
    else:
        s3_endpoint = request.getfixturevalue("s3_endpoint")
        storage_url = f"s3://ota-test/{uuid.uuid4().hex[:12]}"
    base = {
        "database_url": database_url,
        "storage_url": storage_url,
        "s3_endpoint_url": s3_endpoint,
        "admin_token": ADMIN_TOKEN,
        "enrollment_secret": ENROLLMENT_SECRET,
        "secret_key": "test-secret-key-0123456789abcdef",
        "publisher_keys": [publisher_key_file],
        "cache_seconds": 0.05,
        "seen_flush_seconds": 0.1,
    }
    e = Env(name, database_url, storage_url, s3_endpoint, signing_key, base)
    try:
        yield e
    finally:
        for c in reversed(e.clients):
            c.__exit__(None, None, None)


@pytest.fixture()
def client(env: Env) -> TestClient:
    return env.client()


@pytest.fixture()
def cli(env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """`cli(*args, **overrides)`: `ota-server ARGS` run in this process with this env's settings (and
    `overrides`) in OTA_* variables; its exit status, stdout and stderr."""

    def run(*args: str, **overrides: Any) -> tuple[int, str, str]:
        for name, value in {**env.base, **overrides}.items():
            if value is not None:
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
                monkeypatch.setenv(f"OTA_{name.upper()}", text)
        capsys.readouterr()
        rc = server_cli.main(list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(client: TestClient, device_id: str | None = None, *, model: str = helpers.MODEL, **labels: str) -> str:
    body: dict[str, Any] = {"enrollment_secret": ENROLLMENT_SECRET, "model": model, "labels": labels}
    if device_id is not None:
        body["device_id"] = device_id
    r = client.post("/v1/devices/enroll", json=body)
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def publish(client: TestClient, data: bytes, model: str = helpers.MODEL) -> dict[str, Any]:
    r = client.post(f"/v1/models/{model}/versions", content=data, headers=ADMIN)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


IMMEDIATE = {"stages": [{"percent": 100, "soak_seconds": 0}], "min_devices": 0}


def release(client: TestClient, data: bytes, model: str = helpers.MODEL) -> dict[str, Any]:
    """Publish a version and roll it out immediately (one stage of 100 %, no gates, `min_devices` 0):
    it becomes the model's baseline at once, which is what publishing alone did before rollouts."""
    body = publish(client, data, model)
    r = client.post("/v1/rollouts", json={"model": model, "version": body["version"], **IMMEDIATE}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "completed", r.json()
    return body


def download(client: TestClient, url: str, headers: dict[str, str] | None = None) -> Any:
    """GET a download URL from an offer: this app's own (signed) URL, or a presigned S3 URL over real HTTP."""
    if url.startswith("http://testserver/"):
        return client.get(url, headers=headers)
    import httpx

    return httpx.get(url, headers=headers, timeout=10)


def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with this status (and problem type)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    doc: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= doc.keys(), doc
    assert doc["status"] == status
    assert isinstance(doc["detail"], str) and doc["detail"]
    if slug is not None:
        assert doc["type"] == f"urn:ota:problem:{slug}", doc
    return doc


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (connections are refused)."""
    yield free_port()
