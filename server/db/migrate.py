"""Alembic, driven from code: `ota-server migrate`, `ota-server serve` and the tests use this.

The script location is found relative to this package (the repository's ``migrations/``), so the
commands work from any working directory. Concurrent starts are safe: migrations run under a
PostgreSQL advisory lock, or an exclusive file lock next to a SQLite database.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from ..errors import ConfigurationError, DatabaseUnavailableError
from .session import UNAVAILABLE, make_engine

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
_LOCK_ID = 0x07A5E4E4  # arbitrary, fixed: "the OTA schema"


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    if not (MIGRATIONS / "env.py").exists():
        raise ConfigurationError(f"migrations not found at {MIGRATIONS}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).expanduser().resolve().with_name(Path(database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`; :class:`DatabaseUnavailableError` if it cannot be reached."""
    engine = make_engine(url, pool_size=1)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
                try:
                    command.upgrade(alembic_config(url, conn), revision)
                    conn.commit()
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                    conn.commit()
        else:
            with _sqlite_file_lock(url), engine.connect() as conn:
                command.upgrade(alembic_config(url, conn), revision)
                conn.commit()
    except UNAVAILABLE as e:
        raise DatabaseUnavailableError(f"cannot migrate the database: {getattr(e, 'orig', None) or e}") from e
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.migration import MigrationContext

    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The revision this code's migrations lead to (what `upgrade` brings a database to)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_current(url: str) -> None:
    """:class:`ConfigurationError` unless the database is at :func:`head_revision` (for `serve --no-migrate`)."""
    try:
        current = current_revision(url)
    except UNAVAILABLE as e:
        raise DatabaseUnavailableError(f"cannot read the schema revision: {getattr(e, 'orig', None) or e}") from e
    head = head_revision()
    if current != head:
        raise ConfigurationError(
            f"the database is at revision {current or 'none (empty)'}, this server needs {head}: "
            "run `ota-server migrate` first (or serve without --no-migrate)"
        )
