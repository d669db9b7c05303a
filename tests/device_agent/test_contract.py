"""`FakeServer` held to the real server's answers wherever the agent's tests rely on them.

The fake stays for the tests that need a server that lies; the agent's calls against the real
server itself are in `test_contract_enroll_poll.py` and `test_contract_events_blobs.py`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from device_agent.protocol import make_event
from tests.server import helpers
from tests.server.conftest import ENROLLMENT_SECRET, Env

from .fakeserver import SECRET, FakeServer
from .realserver import ON_SQLITE_FILE, Real, payload_of, served

pytestmark = ON_SQLITE_FILE


async def answers(http: httpx.AsyncClient, secret: str, blob: bytes, current: int) -> list[tuple[Any, ...]]:
    """What a server says to the requests the agent makes, reduced to what the agent can tell apart."""

    def seen(r: httpx.Response, *facts: Any) -> tuple[Any, ...]:
        kind = r.headers.get("content-type", "").split(";")[0]
        if kind == "application/problem+json":
            doc = r.json()
            return (r.status_code, kind, doc.get("type"), doc.get("status"), sorted(doc), *facts)
        if kind == "application/json":
            return (r.status_code, kind, sorted(r.json()), *facts)
        return (r.status_code, *facts)

    out = []
    enroll = {"enrollment_secret": secret, "model": helpers.MODEL, "device_id": "cam-1"}
    out.append(seen(await http.post("/v1/devices/enroll", json={**enroll, "enrollment_secret": "wrong"})))
    r = await http.post("/v1/devices/enroll", json=enroll)
    out.append(seen(r, r.json()["device_id"]))
    device = {"Authorization": f"Bearer {r.json()['token']}"}
    out.append(seen(await http.post("/v1/devices/enroll", json=enroll)))
    stranger = {"Authorization": "Bearer not-a-token"}
    out.append(seen(await http.get("/v1/device/update", params={"current_version": current}, headers=stranger)))
    out.append(seen(await http.get("/v1/device/update", params={"current_version": current}, headers=device)))
    events = [make_event("checking", current), make_event("installed", current, source="full")]
    r = await http.post("/v1/device/events", json=events, headers=device)
    out.append(seen(r, r.json() if r.content else None))
    out.append(seen(await http.post("/v1/device/events", json=events, headers=stranger)))
    out.append(seen(await http.post("/v1/device/token", headers=device)))
    out.append(seen(await http.post("/v1/device/token", headers=stranger)))
    sha = hashlib.sha256(blob).hexdigest()
    r = await http.get(f"/v1/blobs/{sha}", headers={**device, "Range": "bytes=100-"})
    out.append(seen(r, r.headers.get("content-range"), r.content == blob[100:]))
    r = await http.get(f"/v1/blobs/{sha}", headers={**device, "Range": f"bytes={len(blob)}-"})
    out.append(seen(r, r.headers.get("content-range")))
    out.append(seen(await http.get(f"/v1/blobs/{'a' * 64}", headers=device)))
    return out


def test_fake_server_answers_the_agents_requests_like_the_real_one(env: Env) -> None:
    async def scenario(real: Real) -> None:
        artifact = await real.publish(1)
        blob = payload_of(artifact)
        truth = await answers(real.http, ENROLLMENT_SECRET, blob, current=1)
        assert [a[0] for a in truth] == [403, 201, 409, 401, 204, 200, 401, 200, 401, 206, 416, 404]
        assert truth[5][-1] == {"recorded": 2, "status": "installed", "installed_version": 1}

        with FakeServer() as fake:
            fake.blob_url(blob)
            async with httpx.AsyncClient(base_url=fake.url) as http:
                assert await answers(http, SECRET, blob, current=1) == truth

    served(env, scenario)
