"""The agent's `ServerClient` against the real server: the events it sends and the blobs it downloads.

The server runs in-process (`realserver`); what the agent sends is what an operator then sees.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import artifact as A
from device_agent.download import DownloadDir
from device_agent.errors import AuthError, ProtocolError, RejectedError, ServerBusyError
from device_agent.protocol import make_event
from tests.server.conftest import Env

from .realserver import ON_SQLITE_FILE, Real, payload_of, read_blob, served

pytestmark = ON_SQLITE_FILE


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
