"""Downloads at the transport seam (httpx.MockTransport): resume, range quirks, length caps, token scope."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

import artifact as A
from device_agent.download import DownloadDir
from device_agent.errors import NetworkError, ProtocolError, TransientError
from device_agent.protocol import ServerClient, parse_offer

BLOB = bytes(range(256)) * 400  # 100 KiB
SHA = hashlib.sha256(BLOB).hexdigest()
Handler = Callable[[httpx.Request], httpx.Response]


def _serve(blob: bytes, *, honour_range: bool = True, seen: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        ranged = request.headers.get("range")
        if ranged and honour_range:
            start = int(ranged.removeprefix("bytes=").rstrip("-"))
            if start >= len(blob):
                return httpx.Response(416)
            headers = {"Content-Range": f"bytes {start}-{len(blob) - 1}/{len(blob)}"}
            return httpx.Response(206, content=blob[start:], headers=headers)
        return httpx.Response(200, content=blob)

    return handler


def _fetch(tmp_path: Path, handler: Handler, url: str = "/v1/blobs/x", length: int = len(BLOB), sha: str = SHA) -> Path:
    async def go() -> Path:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = ServerClient(http, "http://ota.example:8000", token="device-token")
            result = await DownloadDir(tmp_path / "dl").fetch(client, url, length=length, sha256=sha, what="payload")
            return result.path

    return asyncio.run(go())


def test_interrupted_download_resumes_with_range_from_the_partial_length(tmp_path: Path) -> None:
    part = DownloadDir(tmp_path / "dl").part(SHA)
    part.write_bytes(BLOB[:30_000])
    seen: list[httpx.Request] = []
    path = _fetch(tmp_path, _serve(BLOB, seen=seen))
    assert path.read_bytes() == BLOB
    assert [r.headers.get("range") for r in seen] == ["bytes=30000-"]
    assert not part.exists()


def test_server_ignoring_the_range_restarts_the_file_from_zero(tmp_path: Path) -> None:
    DownloadDir(tmp_path / "dl").part(SHA).write_bytes(BLOB[:30_000])
    assert _fetch(tmp_path, _serve(BLOB, honour_range=False)).read_bytes() == BLOB


def test_partial_longer_than_the_blob_is_dropped_and_refetched(tmp_path: Path) -> None:
    DownloadDir(tmp_path / "dl").part(SHA).write_bytes(BLOB + b"junk")
    assert _fetch(tmp_path, _serve(BLOB)).read_bytes() == BLOB


def test_resumed_file_that_fails_its_hash_is_retried_from_zero_not_refused(tmp_path: Path) -> None:
    """A crash (power cut) can leave garbage in a partial file: that must not condemn the version."""
    downloads = DownloadDir(tmp_path / "dl")
    downloads.part(SHA).write_bytes(b"\0" * 30_000)
    with pytest.raises(TransientError, match="restarting"):
        _fetch(tmp_path, _serve(BLOB))
    assert not downloads.part(SHA).exists()
    assert _fetch(tmp_path, _serve(BLOB)).read_bytes() == BLOB


def test_stream_longer_than_the_signed_length_is_cut_and_never_stored(tmp_path: Path) -> None:
    with pytest.raises(A.TooLongError):
        _fetch(tmp_path, _serve(BLOB + b"x" * 100_000))
    part = DownloadDir(tmp_path / "dl").part(SHA)
    assert not part.exists() or part.stat().st_size <= len(BLOB)


def test_tampered_stream_fails_the_hash(tmp_path: Path) -> None:
    with pytest.raises(A.HashMismatchError):
        _fetch(tmp_path, _serve(BLOB[:-1] + b"\x00"))


def test_bearer_token_goes_to_our_server_but_never_to_presigned_storage(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    _fetch(tmp_path, _serve(BLOB, seen=seen), url="https://bucket.s3.example/blob?X-Amz-Signature=abc")
    assert "authorization" not in seen[0].headers
    seen.clear()
    (tmp_path / "dl").joinpath(f"{SHA}.blob").unlink()
    _fetch(tmp_path, _serve(BLOB, seen=seen), url="/v1/blobs/" + SHA)
    assert seen[0].headers["authorization"] == "Bearer device-token"
    assert str(seen[0].url) == f"http://ota.example:8000/v1/blobs/{SHA}"


def test_compressed_transfer_encoding_is_refused(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        return httpx.Response(200, content=BLOB, headers={"Content-Encoding": "gzip"})

    with pytest.raises(ProtocolError):
        _fetch(tmp_path, handler)


def test_expired_presigned_url_is_transient_not_a_verdict_on_the_version(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="fresh URL"):
        _fetch(tmp_path, lambda r: httpx.Response(403, content=b"<Error>Request has expired</Error>"))


def test_connection_failure_is_a_network_error(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(NetworkError):
        _fetch(tmp_path, handler)


def test_offer_prefers_the_exact_manifest_bytes_when_sent(key: A.SigningKey) -> None:
    body = {
        "model": "shapes",
        "version": 2,
        "manifest": {"not": "these"},
        "manifest_b64": "eyJhIjoxfQ==",
        "signatures": [],
        "download": {"url": "/v1/blobs/x", "length": 10, "sha256": "AB"},
        "delta": None,
        "poll_interval": 30,
    }
    offer = parse_offer(body, etag='"e"')
    assert offer.manifest_bytes == b'{"a":1}' and offer.download.sha256 == "ab" and offer.poll_interval == 30.0
    del body["manifest_b64"]
    assert parse_offer(body, etag=None).manifest_bytes == b'{"not":"these"}'


@pytest.mark.parametrize(
    "broken",
    [
        {"version": "2"},
        {"download": {"url": "/x", "length": -1, "sha256": "ab"}},
        {"signatures": "none"},
        {"delta": {"url": "/d", "length": 5, "sha256": "ab"}},
        {"manifest": None},
    ],
)
def test_garbled_offer_is_a_protocol_error_not_a_verdict(broken: dict[str, object]) -> None:
    body: dict[str, object] = {
        "model": "shapes",
        "version": 2,
        "manifest": {"a": 1},
        "signatures": [],
        "download": {"url": "/v1/blobs/x", "length": 10, "sha256": "ab"},
        "delta": None,
    }
    body.update(broken)
    with pytest.raises(ProtocolError):
        parse_offer(body, etag=None)


def test_completed_download_read_after_a_restart_is_verified_again_from_disk(tmp_path: Path) -> None:
    """The bytes a download verified are handed on as they were checked; after a restart, the blob on
    disk is checked again before it is installed."""
    _fetch(tmp_path, _serve(BLOB))
    restarted = DownloadDir(tmp_path / "dl")
    got = restarted.read(SHA, length=len(BLOB), what="payload")
    assert got is not None and (got.data, got.sha256) == (BLOB, SHA)
    restarted.blob(SHA).unlink()
    assert DownloadDir(tmp_path / "dl").read(SHA, length=len(BLOB), what="payload") is None


# -- transport faults say nothing about the version (issue 12, findings 6 and 10) -------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 8192):
        yield data[i : i + 8192]


def _fetch_error(tmp_path: Path, handler: Handler) -> BaseException:
    with pytest.raises(Exception) as caught:
        _fetch(tmp_path, handler)
    return caught.value


@pytest.mark.parametrize("where", ["verifying", "fetching"])
def test_finished_download_damaged_on_disk_is_fetched_again_not_refused(tmp_path: Path, where: str) -> None:
    """A `.blob` verified when it arrived and damaged on disk since (a bit flip, a torn page) is
    the disk's fault, like a damaged partial file: it is fetched again, the version is not condemned."""
    _fetch(tmp_path, _serve(BLOB))
    downloads = DownloadDir(tmp_path / "dl")
    downloads.blob(SHA).write_bytes(BLOB[:1000] + bytes([BLOB[1000] ^ 1]) + BLOB[1001:])
    if where == "verifying":
        assert downloads.read(SHA, length=len(BLOB), what="payload") is None
        assert not downloads.blob(SHA).exists()
    seen: list[httpx.Request] = []
    assert _fetch(tmp_path, _serve(BLOB, seen=seen)).read_bytes() == BLOB
    assert len(seen) == 1


def test_connection_closed_without_content_length_keeps_the_partial_and_resumes(tmp_path: Path) -> None:
    def cut(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_chunks(BLOB[:40_000]))  # chunked, no Content-Length, then closed

    error = _fetch_error(tmp_path, cut)
    assert isinstance(error, TransientError) and "ended early" in str(error)
    assert DownloadDir(tmp_path / "dl").partial_size(SHA) == 40_000
    seen: list[httpx.Request] = []
    assert _fetch(tmp_path, _serve(BLOB, seen=seen)).read_bytes() == BLOB
    assert [r.headers.get("range") for r in seen] == ["bytes=40000-"]


def test_short_content_length_is_transient_not_truncated_verdict(tmp_path: Path) -> None:
    error = _fetch_error(tmp_path, lambda r: httpx.Response(200, content=BLOB[:-100]))
    assert isinstance(error, TransientError) and not isinstance(error, A.ArtifactError)


def test_206_that_carries_the_whole_file_is_transient_and_restarts(tmp_path: Path) -> None:
    DownloadDir(tmp_path / "dl").part(SHA).write_bytes(BLOB[:30_000])

    def whole(request: httpx.Request) -> httpx.Response:  # claims the asked range, sends everything
        headers = {"Content-Range": f"bytes 30000-{len(BLOB) - 1}/{len(BLOB)}"}
        return httpx.Response(206, content=_chunks(BLOB), headers=headers)

    error = _fetch_error(tmp_path, whole)
    assert isinstance(error, TransientError)
    assert DownloadDir(tmp_path / "dl").partial_size(SHA) == 0
    assert _fetch(tmp_path, _serve(BLOB)).read_bytes() == BLOB


@pytest.mark.parametrize(
    "content_range",
    ["bytes 0-99/100", f"bytes 30000-{len(BLOB) - 1}/{len(BLOB) + 5}", "bytes 30000-10/*", "bytes=30000-", "junk"],
)
def test_wrong_content_range_is_a_protocol_error_not_a_verdict(tmp_path: Path, content_range: str) -> None:
    DownloadDir(tmp_path / "dl").part(SHA).write_bytes(BLOB[:30_000])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=BLOB[30_000:], headers={"Content-Range": content_range})

    assert isinstance(_fetch_error(tmp_path, handler), ProtocolError)
    assert DownloadDir(tmp_path / "dl").partial_size(SHA) == 30_000


def test_range_not_satisfiable_drops_the_partial_and_restarts(tmp_path: Path) -> None:
    """416 (the partial is longer than what the server has) reaches the downloader instead of being
    turned into a generic protocol error first."""
    DownloadDir(tmp_path / "dl").part(SHA).write_bytes(BLOB[:30_000])
    error = _fetch_error(tmp_path, lambda r: httpx.Response(416, headers={"Content-Range": f"bytes */{len(BLOB)}"}))
    assert isinstance(error, TransientError) and "refused to resume" in str(error)
    assert DownloadDir(tmp_path / "dl").partial_size(SHA) == 0


def test_complete_fresh_bytes_with_the_wrong_hash_still_condemn_the_version(tmp_path: Path) -> None:
    assert isinstance(_fetch_error(tmp_path, _serve(BLOB[:-1] + b"\x00")), A.HashMismatchError)


def test_trickling_server_is_cut_below_the_minimum_rate(tmp_path: Path) -> None:
    """A 1 byte/s server cannot pin the update loop: below `min_rate` over `stall_window` the
    transfer is cut (transient), and what arrived is kept for the next attempt."""

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(200):
            await asyncio.sleep(0.01)
            yield BLOB[i : i + 1]

    async def go() -> None:
        handler = lambda r: httpx.Response(200, content=trickle())  # noqa: E731
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = ServerClient(http, "http://ota.example:8000", token="t")
            slow = DownloadDir(tmp_path / "dl", min_rate=1000.0, stall_window=0.2)
            await slow.fetch(client, "/v1/blobs/x", length=len(BLOB), sha256=SHA, what="payload")

    with pytest.raises(TransientError, match="bytes/s"):
        asyncio.run(go())
    assert 0 < DownloadDir(tmp_path / "dl").partial_size(SHA) < 200


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (float("nan"), None),
        (float("inf"), 86_400.0),
        (-5, None),
        (0, None),
        ("30", None),
        (True, None),
        (10**400, 86_400.0),
        (0.001, 1.0),
        (10**9, 86_400.0),
        (30, 30.0),
    ],
)
def test_hostile_poll_interval_is_ignored_or_clamped_never_taken(sent: object, kept: float | None) -> None:
    """NaN would poll hundreds of times a second, Infinity never again: the offer stays usable and the
    interval is bounded to [1 s, 1 day] (None: the agent keeps the interval it has)."""
    body = {
        "model": "shapes",
        "version": 2,
        "manifest": {"a": 1},
        "signatures": [],
        "download": {"url": "/v1/blobs/x", "length": 10, "sha256": "ab"},
        "poll_interval": sent,
    }
    assert parse_offer(body, etag=None).poll_interval == kept
