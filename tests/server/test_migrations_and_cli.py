"""Alembic is the only way the schema changes, and the `ota-server` commands work from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import artifact as A
from bench._common import private_pg_schema
from server.db.migrate import alembic_config, upgrade
from server.db.models import Base

from . import helpers
from .conftest import free_port

REPO = Path(__file__).resolve().parents[2]
OTA_SERVER = [sys.executable, "-m", "server"]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("pg_url")  # skip or fail exactly like the rest of the suite
    with private_pg_schema("ota_mig") as url:
        yield url


def test_migrations_produce_exactly_the_models(empty_db: str) -> None:
    upgrade(empty_db)
    engine = create_engine(empty_db)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_migrations_downgrade_to_nothing_and_back(empty_db: str) -> None:
    upgrade(empty_db)
    engine = create_engine(empty_db)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(empty_db, conn), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(empty_db)
    upgrade(empty_db)  # idempotent


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OTA_SERVER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def cli_env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    env.update(
        PYTHONPATH=str(REPO),
        OTA_DATABASE_URL=database_url,
        OTA_STORAGE_URL=f"file://{tmp_path / 'blobs'}",
        **extra,
    )
    return env


def test_concurrent_migrate_commands_from_another_directory(empty_db: str, tmp_path: Path) -> None:
    env = cli_env(empty_db, tmp_path)
    procs = [
        subprocess.Popen(
            [*OTA_SERVER, "migrate"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "database at revision 0003" in out


def test_serve_migrates_serves_and_accepts_minted_tokens(empty_db: str, tmp_path: Path) -> None:
    key = A.generate_key()
    A.save_public_key(key, tmp_path / "pub.pem")
    env = cli_env(empty_db, tmp_path, OTA_PUBLISHER_KEYS=str(tmp_path / "pub.pem"))
    minted = run_cli("create-token", "--name", "ci", env=env, cwd=tmp_path)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.startswith("otaa_") and "shown only this once" in minted.stderr
    assert run_cli("create-token", "--name", "ci", env=env, cwd=tmp_path).returncode == 1  # names are unique
    assert "ci\t" in run_cli("list-tokens", env=env, cwd=tmp_path).stdout

    port = free_port()
    server = subprocess.Popen(
        [*OTA_SERVER, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(
            f"{base}/v1/models/shapes/versions",
            content=helpers.build_artifact(key, version=1),
            headers=auth,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        assert r.json()["published_by"] == "ci"
        assert run_cli("revoke-token", "--name", "ci", env=env, cwd=tmp_path).returncode == 0
        assert httpx.get(f"{base}/v1/models", headers=auth, timeout=5).status_code == 401
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [(x["method"], x["path"], x["status"], x["admin"]) for x in lines if x["logger"] == "ota.access"]
    assert ("POST", "/v1/models/shapes/versions", 201, "ci") in access, stderr  # flushed at shutdown


def test_cli_refuses_placeholder_secrets_in_production(tmp_path: Path) -> None:
    env = cli_env(f"sqlite:///{tmp_path / 'x.db'}", tmp_path, OTA_ENV="production")
    result = run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "OTA_ADMIN_TOKEN is a placeholder" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_cli_reports_an_unreachable_database(tmp_path: Path) -> None:
    env = cli_env(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", tmp_path)
    result = run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 3 and "cannot migrate the database" in result.stderr
