"""Shared by the benchmarks and the test suite: a private PostgreSQL schema.

Benchmarks import only public APIs and this package (run them as ``python -m bench.NAME`` from the
repository root); the test suite imports this module too, so the helper has one home.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def private_pg_schema(prefix: str) -> Iterator[str]:
    """A fresh schema in the `test` database, dropped afterwards; yields a URL whose search_path is it.

    Private schemas let the test suite, the migration tests and the poll benchmark share one
    PostgreSQL without seeing each other's tables.
    """
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
