"""The agent's `ServerClient` against the real server: enrolling and polling, and what the agent gets back.

The server runs in-process (`realserver`); a refusal reaches the agent as the error it acts on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import artifact as A
from device_agent.errors import AuthError, EnrollmentError, ProtocolError, ServerBusyError
from device_agent.protocol import Offer, make_event
from tests.server import helpers
from tests.server.conftest import ADMIN, ADMIN_TOKEN, ENROLLMENT_SECRET, Env

from .realserver import BASE, ON_SQLITE_FILE, Real, down_database, eventually, payload_of, read_blob, served

pytestmark = ON_SQLITE_FILE


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
