"""The agent's `ServerClient` against the real server: every call it makes, and what the agent gets back.

The app is the real `create_app` on SQLite and file storage (the server tests' `env`, first
backend pair), lifespan included (registry view, last-seen flush, delta builds), reached through
`httpx.ASGITransport` in the test's own event loop. `FakeServer` stays for the tests that need a
server that lies; the last test here holds it to the real server's answers wherever the agent's
tests rely on them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import artifact as A
from device_agent.download import DownloadDir
from device_agent.errors import AuthError, EnrollmentError, ProtocolError, RejectedError, ServerBusyError
from device_agent.protocol import Credentials, Offer, ServerClient, make_event
from server import create_app
from tests.server import conftest as server_fixtures
from tests.server import helpers
from tests.server.conftest import ADMIN, ADMIN_TOKEN, ENROLLMENT_SECRET, IMMEDIATE, Env

from .fakeserver import SECRET, FakeServer

# The server tests' `env` (and the fixtures it builds on), on its SQLite + file storage pair only.
env = server_fixtures.env
sqlite_template = server_fixtures.sqlite_template
publisher_key_file = server_fixtures.publisher_key_file
pytestmark = pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)

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


# -- enroll ---------------------------------------------------------------------------------------


def test_enroll_returns_credentials_the_server_then_accepts(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client = real.client()
        creds = await client.enroll(secret=ENROLLMENT_SECRET, model="shapes", device_id=None, labels={"site": "lab"})
        assert creds.device_id.startswith("dev-") and client.token == creds.token
        assert await client.poll(0, None) is None  # the token works: nothing published yet
        device = await real.device(creds.device_id)
        assert (device["model"], device["labels"], device["installed_version"]) == ("shapes", {"site": "lab"}, None)

    served(env, scenario)


def test_enroll_with_a_wrong_secret_is_refused_403(env: Env) -> None:
    async def scenario(real: Real) -> None:
        with pytest.raises(EnrollmentError, match="HTTP 403 the enrollment secret is wrong"):
            await real.client().enroll(secret="not-the-secret", model="shapes", device_id="cam-1", labels={})
        r = await real.http.get("/v1/devices", headers=ADMIN)
        assert r.json()["items"] == []

    served(env, scenario)


def test_enroll_of_a_taken_device_id_is_refused_409(env: Env) -> None:
    async def scenario(real: Real) -> None:
        _, first = await real.enrolled("cam-1")
        with pytest.raises(EnrollmentError, match="HTTP 409 device 'cam-1' is already enrolled"):
            await real.enrolled("cam-1")
        assert await real.client(first.token).poll(0, None) is None  # the first enrollment still stands

    served(env, scenario)


def test_enroll_with_an_invalid_model_name_is_refused_422(env: Env) -> None:
    async def scenario(real: Real) -> None:
        with pytest.raises(EnrollmentError, match=r"HTTP 422 body\.model"):
            await real.client().enroll(secret=ENROLLMENT_SECRET, model="Not A Model!", device_id=None, labels={})

    served(env, scenario)


def test_enroll_while_the_database_is_down_is_a_503_to_retry(env: Env, tmp_path: Path) -> None:
    async def scenario(real: Real) -> None:
        with pytest.raises(ServerBusyError, match="HTTP 503") as caught:
            await real.enrolled()
        assert caught.value.retry_after == 7

    served(env, scenario, database_url=down_database(tmp_path), retry_after=7)


# -- poll -----------------------------------------------------------------------------------------


def test_poll_returns_the_published_version_as_a_typed_offer(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        artifact = await real.publish(1)
        offer = await client.poll(0, None)
        assert isinstance(offer, Offer)
        payload = payload_of(artifact)
        assert (offer.model, offer.version, offer.delta) == ("shapes", 1, None)
        assert offer.manifest_bytes == A.read_artifact(artifact).manifest_bytes  # the exact signed bytes
        assert len(offer.signatures) == 1
        assert (offer.download.length, offer.download.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
        assert offer.download.url.startswith(f"{BASE}/v1/blobs/{offer.download.sha256}?")
        assert offer.poll_interval == 42.0
        assert offer.etag is not None and offer.etag.startswith('W/"1-')

    served(env, scenario, poll_interval=42, poll_jitter=0)


def test_poll_of_a_device_on_the_offered_version_gets_none(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        assert await client.poll(0, None) is None  # nothing published (204)
        await real.publish(1)
        assert await client.poll(1, None) is None  # runs it already (204)
        assert await client.poll(2, None) is None  # runs something newer: never a downgrade
        offer = await client.poll(0, None)
        assert offer is not None and offer.version == 1

    served(env, scenario)


def test_poll_without_a_version_uses_what_the_device_last_reported(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        await real.publish(1)
        offer = await client.poll(None, None)
        assert offer is not None and offer.version == 1
        await client.post_events([make_event("installed", 1, source="full", bytes=offer.download.length)])
        assert await client.poll(None, None) is None

    served(env, scenario)


def test_poll_with_the_offers_etag_gets_none_until_the_offer_changes(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        await real.publish(1)
        first = await client.poll(0, None)
        assert first is not None and first.etag is not None
        assert await client.poll(0, first.etag) is None  # 304
        again = await client.poll(0, 'W/"some-other-offer"')
        assert again is not None and (again.version, again.etag) == (1, first.etag)
        await real.publish(2)
        newer = await client.poll(0, first.etag)
        assert newer is not None and newer.version == 2 and newer.etag != first.etag

    served(env, scenario)


def test_poll_offers_a_delta_once_the_server_built_it(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        v1 = await real.publish(1)
        v2 = await real.publish(2)  # the delta 1 → 2 is built in the background

        async def with_delta() -> Offer | None:
            offer = await client.poll(1, None)
            return offer if offer is not None and offer.delta is not None else None

        offer = await eventually(with_delta, "a delta from v1")
        delta = offer.delta
        assert delta is not None and (offer.version, delta.from_version) == (2, 1)
        assert delta.length < offer.download.length
        status, _, data = await read_blob(client, delta.url)
        assert status == 200 and (len(data), hashlib.sha256(data).hexdigest()) == (delta.length, delta.sha256)
        assert A.apply_delta(helpers.onnx_of(v1), data) == helpers.onnx_of(v2)
        full = await client.poll(0, None)
        assert full is not None and full.delta is None  # no base, no delta

    served(env, scenario)


def test_poll_with_an_unknown_token_is_an_auth_error_401(env: Env) -> None:
    async def scenario(real: Real) -> None:
        await real.publish(1)
        with pytest.raises(AuthError, match="HTTP 401 unknown or revoked device token"):
            await real.client("not-a-token").poll(0, None)

    served(env, scenario)


def test_poll_with_an_admin_token_is_an_auth_error_403(env: Env) -> None:
    async def scenario(real: Real) -> None:
        with pytest.raises(AuthError, match="HTTP 403 device endpoints act for the calling device"):
            await real.client(ADMIN_TOKEN).poll(0, None)

    served(env, scenario)


def test_poll_of_a_decommissioned_device_is_an_auth_error_401(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled("cam-1")
        assert (await real.http.delete("/v1/devices/cam-1", headers=ADMIN)).status_code == 204
        with pytest.raises(AuthError, match="HTTP 401"):
            await client.poll(0, None)

    served(env, scenario)


def test_poll_with_an_out_of_range_version_is_a_protocol_error_422(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        with pytest.raises(ProtocolError, match=r"HTTP 422 query\.current_version"):
            await client.poll(2**31, None)

    served(env, scenario)


def test_poll_while_the_database_is_down_is_a_503_to_retry(env: Env, tmp_path: Path) -> None:
    async def enroll(real: Real) -> str:
        return (await real.enrolled())[1].token

    token = served(env, enroll)  # the same secret key signs tokens for every process

    async def scenario(real: Real) -> None:
        with pytest.raises(ServerBusyError, match="HTTP 503") as caught:
            await real.client(token).poll(1, None)
        assert caught.value.retry_after == 7

    served(env, scenario, database_url=down_database(tmp_path), retry_after=7)


# -- events ---------------------------------------------------------------------------------------


def test_events_the_agent_sends_are_recorded_in_order(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled("cam-1")
        await client.post_events(
            [
                make_event("checking", 2),
                make_event("downloading", 2, source="delta", bytes=900),
                make_event("verified", 2),
                make_event("installed", 2, source="delta", bytes=900, from_version=1),
                make_event("failed", 3, reason="hash_mismatch", detail="payload sha256 differs", state="verifying"),
                make_event("rolled_back", 3, reason="validation", detail="golden set differs", from_version=3),
            ]
        )
        device = await real.device("cam-1")
        assert (device["status"], device["status_reason"], device["installed_version"]) == (
            "rolled_back",
            "validation",
            2,
        )
        events = [(e["type"], e["version"], e["reason"]) for e in reversed(device["recent_events"])]
        assert events == [
            ("checking", 2, None),
            ("downloading", 2, None),
            ("verified", 2, None),
            ("installed", 2, None),
            ("failed", 3, "hash_mismatch: payload sha256 differs"),
            ("rolled_back", 3, "validation: golden set differs"),
        ]

    served(env, scenario)


def test_metrics_event_the_agent_sends_is_recorded(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled("cam-1")
        window = {"p50_ms": 3.5, "p95_ms": 9.0, "mean_confidence": 0.8, "requests": 5}
        await client.post_events([make_event("metrics", 1, metrics=window)])
        assert (await real.device("cam-1"))["last_metrics"] == {"version": 1, **window}

    served(env, scenario)


def test_metrics_queued_flat_by_an_older_agent_are_sent_nested(env: Env) -> None:
    """An upgrade must not strand the metrics an older agent left in its queue on disk."""

    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled("cam-1")
        await client.post_events([make_event("metrics", 1, p50_ms=2.0, p95_ms=4.0, mean_confidence=0.5, requests=9)])
        last = (await real.device("cam-1"))["last_metrics"]
        assert last == {"version": 1, "p50_ms": 2.0, "p95_ms": 4.0, "mean_confidence": 0.5, "requests": 9}

    served(env, scenario)


def test_events_the_server_finds_invalid_are_rejected_422(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled("cam-1")
        with pytest.raises(RejectedError, match=r"HTTP 422 .*a 'failed' event needs a reason"):
            await client.post_events([{"type": "failed", "version": 2}])
        assert (await real.device("cam-1"))["recent_events"] == []

    served(env, scenario)


def test_events_with_an_unknown_token_are_an_auth_error_401(env: Env) -> None:
    async def scenario(real: Real) -> None:
        with pytest.raises(AuthError, match="HTTP 401"):
            await real.client("not-a-token").post_events([make_event("checking", 1)])

    served(env, scenario)


# -- blobs ----------------------------------------------------------------------------------------


def test_full_download_resumes_with_range_and_gets_the_exact_tail(env: Env, tmp_path: Path) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        payload = payload_of(await real.publish(1))
        offer = await client.poll(0, None)
        assert offer is not None
        url = offer.download.url

        assert await read_blob(client, url) == (200, 0, payload)
        assert await read_blob(client, url, 1000) == (206, 1000, payload[1000:])
        # 416 reaches the downloader (which drops its partial file), not a generic protocol error
        assert await read_blob(client, url, len(payload)) == (416, 0, b"")

        downloads = DownloadDir(tmp_path / "dl", durable=False)
        downloads.part(offer.download.sha256).write_bytes(payload[:1000])
        result = await downloads.fetch(
            client, url, length=offer.download.length, sha256=offer.download.sha256, what="payload"
        )
        assert (result.resumed_from, result.received) == (1000, len(payload) - 1000)
        assert result.path.read_bytes() == payload

    served(env, scenario)


def test_download_url_with_a_forged_signature_is_refused_for_a_fresh_one(env: Env) -> None:
    async def scenario(real: Real) -> None:
        await real.publish(1)
        client, _ = await real.enrolled()
        offer = await client.poll(0, None)
        assert offer is not None
        forged = offer.download.url.rsplit("sig=", 1)[0] + "sig=AAAAAAAAAAAAAAAAAAAAAAAAAAA"
        with pytest.raises(ProtocolError, match="HTTP 403; will ask the server for a fresh URL"):
            await read_blob(client, forged)

    served(env, scenario)


def test_blob_the_server_does_not_have_is_a_404_for_a_fresh_url(env: Env) -> None:
    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        with pytest.raises(ProtocolError, match="HTTP 404; will ask the server for a fresh URL"):
            await read_blob(client, f"/v1/blobs/{'a' * 64}")

    served(env, scenario)


def test_blob_without_token_or_signature_is_a_401_for_a_fresh_url(env: Env) -> None:
    async def scenario(real: Real) -> None:
        payload = payload_of(await real.publish(1))
        with pytest.raises(ProtocolError, match="HTTP 401; will ask the server for a fresh URL"):
            await read_blob(real.client(), f"/v1/blobs/{hashlib.sha256(payload).hexdigest()}")

    served(env, scenario)


def test_blob_while_storage_is_down_is_a_503_to_retry(env: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "blobs-are-a-file"
    blocker.write_text("")
    # a blob of the device's own model (another one is 404 to a device token, storage or not)
    payload = A.read_artifact(served(env, lambda real: real.publish(1))).payload
    sha = hashlib.sha256(payload).hexdigest()

    async def scenario(real: Real) -> None:
        client, _ = await real.enrolled()
        with pytest.raises(ServerBusyError, match="HTTP 503") as caught:
            await read_blob(client, f"/v1/blobs/{sha}")
        assert caught.value.retry_after == 7

    served(env, scenario, storage_url=f"file://{blocker}/sub", retry_after=7)


# -- the fake server agrees ----------------------------------------------------------------------


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
