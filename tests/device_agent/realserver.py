"""The real server for the agent's tests: the app, started in-process, and an agent's client into it.

The app is the real `create_app` on SQLite and file storage (the server tests' `env`, first
backend pair, bound in this directory's conftest), lifespan included (registry view, last-seen
flush, delta builds), reached through `httpx.ASGITransport` in the test's own event loop. A module
that uses it sets `pytestmark = ON_SQLITE_FILE`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import artifact as A
from device_agent.protocol import Credentials, ServerClient
from server import create_app
from tests.server import helpers
from tests.server.conftest import ADMIN, ENROLLMENT_SECRET, IMMEDIATE, Env

ON_SQLITE_FILE = pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
BASE = "http://ota.test"
T = TypeVar("T")


@dataclass
class Real:
    """The started app and an HTTP client into it, shared by the agent's clients and the admin's calls."""

    env: Env
    http: httpx.AsyncClient
    app: Any = None  # the ASGI app, for an agent of its own to reach it

    def client(self, token: str | None = None) -> ServerClient:
        return ServerClient(self.http, BASE, token=token)

    async def enrolled(self, device_id: str = "cam-1") -> tuple[ServerClient, Credentials]:
        client = self.client()
        creds = await client.enroll(secret=ENROLLMENT_SECRET, model=helpers.MODEL, device_id=device_id, labels={})
        return client, creds

    async def publish(self, version: int) -> bytes:
        artifact = self.env.artifact(version)
        r = await self.http.post(f"/v1/models/{helpers.MODEL}/versions", content=artifact, headers=ADMIN)
        assert r.status_code == 201, r.text
        rollout = {"model": helpers.MODEL, "version": version, **IMMEDIATE}  # publishing alone offers nothing
        r = await self.http.post("/v1/rollouts", json=rollout, headers=ADMIN)
        assert r.status_code == 201 and r.json()["state"] == "completed", r.text
        return artifact

    async def device(self, device_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/devices/{device_id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def served(env: Env, scenario: Callable[[Real], Awaitable[T]], **settings: Any) -> T:
    """Run `scenario` against a started app on `env` (with `settings` overridden)."""

    async def go() -> T:
        app = create_app(env.settings(**settings))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http,
        ):
            return await scenario(Real(env, http, app))

    return asyncio.run(go())


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 10.0) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await probe()) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def payload_of(artifact: bytes) -> bytes:
    return A.read_artifact(artifact).payload


async def read_blob(client: ServerClient, url: str, start: int = 0) -> tuple[int, int, bytes]:
    async with client.open_blob(url, start) as blob:
        return blob.status, blob.start, b"".join([chunk async for chunk in blob.chunks])


def down_database(tmp_path: Path) -> str:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return f"sqlite:///{blocker}/ota.db"
