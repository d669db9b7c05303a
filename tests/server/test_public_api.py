"""The server's public face: exactly these names, resolved lazily so the CLI starts without the web stack."""

from __future__ import annotations

import subprocess
import sys

import server

PUBLIC = {"Settings", "create_app", "errors", "load_settings", "upgrade"}


def test_exported_names_are_exactly_the_public_face() -> None:
    assert set(server.__all__) == PUBLIC and len(server.__all__) == len(PUBLIC)


def test_each_name_resolves() -> None:
    from server.app import create_app
    from server.config import Settings, load_settings
    from server.db.migrate import upgrade

    assert (server.create_app, server.Settings, server.load_settings, server.upgrade) == (
        create_app,
        Settings,
        load_settings,
        upgrade,
    )
    assert issubclass(server.errors.ClientError, server.errors.OtaServerError)
    namespace: dict[str, object] = {}
    exec("from server import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_importing_the_package_loads_neither_the_web_stack_nor_the_database() -> None:
    code = (
        "import sys, server; server.errors; "
        "loaded = {'fastapi', 'sqlalchemy', 'boto3'} & set(sys.modules); assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
