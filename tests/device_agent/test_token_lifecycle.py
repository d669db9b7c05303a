"""The agent's token over its life, against the real server (in-process, `httpx.ASGITransport`).

A real `Agent` renews its token halfway through the lifetime the server gave it (a fake clock at
the `AgentConfig.clock` seam moves time on), enrolls again under the same id when the server
refuses a token whose key was retired — and says so in its events — and, without an enrollment
secret, keeps serving, backs off at the slow pace and shows why in its status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import artifact as A
from device_agent import Agent, AgentConfig
from server.core.security import Signer, key_id
from tests.server import helpers
from tests.server.conftest import ENROLLMENT_SECRET, Env

from .realserver import BASE, ON_SQLITE_FILE, Real, eventually, served

pytestmark = ON_SQLITE_FILE

DAY = 86400.0
KEY_A = "agent-rotation-key-a-0123456789"
KEY_B = "agent-rotation-key-b-0123456789"
RETIRED = {
    "secret_key": KEY_B,
    "previous_secret_keys": f"{KEY_A}@{datetime.now(UTC) - timedelta(seconds=1):%Y-%m-%dT%H:%M:%SZ}",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


class Counting(httpx.AsyncBaseTransport):
    """The in-process transport, counting the polls and token renewals that reach the server."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.polls = 0
        self.renewals = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/device/update":
            self.polls += 1
        elif request.url.path == "/v1/device/token":
            self.renewals += 1
        return await self.inner.handle_async_request(request)


def config(env: Env, tmp_path: Path, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "server": BASE,
        "model": helpers.MODEL,
        "model_dir": tmp_path / "device",
        "trust": A.TrustPolicy.of([env.key.verify_key]),
        "device_id": "cam-1",
        "enroll_secret": ENROLLMENT_SECRET,
        "poll_interval": 0.05,
        "force_poll_interval": True,
        "backoff_base": 0.05,
        "backoff_max": 0.4,
        "threads": 1,
        **overrides,
    }
    return AgentConfig(**values)


async def running(agent: Agent, body: Callable[[], Awaitable[None]]) -> None:
    """Run `agent` while `body` runs, then stop it cleanly (re-raising what the agent raised)."""
    task = asyncio.create_task(agent.run())
    try:
        await body()
    finally:
        agent.stop()
        await asyncio.wait_for(task, timeout=10)


def stored(cfg: AgentConfig) -> dict[str, Any] | None:
    path = cfg.model_dir / "credentials.json"
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value


def test_agent_renews_its_token_halfway_through_its_lifetime_and_stores_it(env: Env, tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = config(env, tmp_path, clock=clock)

    async def scenario(real: Real) -> None:
        transport = Counting(real.app)
        agent = Agent(cfg, transport=transport)

        async def body() -> None:
            first = await eventually(lambda: _async(stored(cfg)), "the enrolled credentials")
            assert first["renew_at"] == pytest.approx(clock.now + 15 * DAY, abs=5)
            clock.now += 14 * DAY  # not yet halfway: the token in hand is kept
            seen = transport.polls
            await eventually(lambda: _async(transport.polls >= seen + 2 or None), "two more polls")
            assert stored(cfg) == first and transport.renewals == 0
            clock.now += 2 * DAY
            renewed = await eventually(
                lambda: _async(s if (s := stored(cfg)) and s["renew_at"] != first["renew_at"] else None),
                "a renewed token stored",
            )
            # (The server's clock did not move: within one second it signs the very same token.)
            assert renewed["renew_at"] == pytest.approx(clock.now + 15 * DAY, abs=5) and transport.renewals == 1
            assert renewed["device_id"] == "cam-1" and agent.device is not None
            assert agent.device.client.token == renewed["token"]
            r = await real.http.get("/v1/device/update", headers={"Authorization": f"Bearer {renewed['token']}"})
            assert r.status_code == 204  # the server takes the renewed token

        await running(agent, body)

    served(env, scenario, device_token_seconds=int(30 * DAY))


async def _async(value: Any) -> Any:
    return value


def test_agent_whose_token_key_was_retired_enrolls_again_under_its_id_and_says_so(env: Env, tmp_path: Path) -> None:
    cfg = config(env, tmp_path)

    async def before(real: Real) -> str:
        agent = Agent(cfg, transport=httpx.ASGITransport(app=real.app))

        async def body() -> None:
            await eventually(lambda: _async(stored(cfg)), "the enrolled credentials")

        await running(agent, body)
        enrolled_at: str = (await real.device("cam-1"))["enrolled_at"]
        return enrolled_at

    async def after(real: Real) -> None:
        old = stored(cfg)
        assert old is not None and Signer(KEY_A).read_device_token(old["token"]) is not None
        agent = Agent(cfg, transport=httpx.ASGITransport(app=real.app))

        async def said_so() -> dict[str, Any] | None:
            events = (await real.device("cam-1"))["recent_events"]
            return next((e for e in events if e["reason"] and e["reason"].startswith("re_enrolled")), None)

        async def body() -> None:
            event = await eventually(said_so, "the re_enrolled event")
            assert "retired" in event["reason"]  # the server's refusal, passed on in the event's detail
            new = stored(cfg)
            assert new is not None and new["token"] != old["token"]
            assert Signer(KEY_B).read_device_token(new["token"]) is not None  # signed with the current key

        await running(agent, body)
        device = await real.device("cam-1")
        assert device["enrolled_at"] == enrolled_at  # the same enrollment: history and labels kept

    enrolled_at = served(env, before, secret_key=KEY_A)
    served(env, after, **RETIRED)


def test_agent_without_an_enrollment_secret_keeps_serving_backs_off_and_reports(env: Env, tmp_path: Path) -> None:
    cfg = config(env, tmp_path)

    async def before(real: Real) -> None:
        agent = Agent(cfg, transport=httpx.ASGITransport(app=real.app))
        await running(agent, lambda: eventually(lambda: _async(stored(cfg)), "the enrolled credentials"))

    async def after(real: Real) -> None:
        transport = Counting(real.app)
        agent = Agent(config(env, tmp_path, enroll_secret=None, backoff_max=3600.0), transport=transport)

        async def refused() -> dict[str, Any] | None:
            error = agent.status().get("last_error")
            return error if error and error["reason"] == "auth" else None

        async def body() -> None:
            error = await eventually(refused, "the refusal in the agent's status")
            assert "retired" in error["detail"] and key_id(KEY_A) not in error["detail"]
            await asyncio.sleep(0.5)  # ten poll intervals: a device looping hot would poll again and again
            assert transport.polls == 1
            assert agent.status()["state"] != "starting"

        await running(agent, body)

    served(env, before, secret_key=KEY_A)
    served(env, after, **RETIRED)


@pytest.mark.parametrize("renew_at", ["absent", "tomorrow", 1e300], ids=["older-agent", "garbled", "absurd"])
def test_stored_credentials_without_a_usable_renewal_time_are_renewed_at_the_first_poll(
    env: Env, tmp_path: Path, renew_at: Any
) -> None:
    cfg = config(env, tmp_path)

    async def scenario(real: Real) -> None:
        await running(
            Agent(cfg, transport=httpx.ASGITransport(app=real.app)),
            lambda: eventually(lambda: _async(stored(cfg)), "the enrolled credentials"),
        )
        creds = stored(cfg)
        assert creds is not None
        if renew_at == "absent":  # what an agent before expiring tokens wrote
            del creds["renew_at"]
        else:
            creds["renew_at"] = renew_at
        (cfg.model_dir / "credentials.json").write_text(json.dumps(creds))
        transport = Counting(real.app)
        agent = Agent(cfg, transport=transport)

        async def body() -> None:
            def usable(s: dict[str, Any] | None) -> dict[str, Any] | None:
                ok = s is not None and isinstance(s.get("renew_at"), float) and s["renew_at"] < cfg.clock() + 16 * DAY
                return s if ok else None

            renewed = await eventually(lambda: _async(usable(stored(cfg))), "a usable renewal time stored")
            assert transport.renewals == 1
            assert renewed["device_id"] == "cam-1"

        await running(agent, body)

    served(env, scenario)
