"""Blob downloads: resumable (Range), cacheable (ETag), and only for holders of a token or a signed URL."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

import artifact as A
from server.core.security import Signer

from . import helpers
from .conftest import ADMIN, Env, assert_problem, bearer, download, enroll, publish, release


@pytest.fixture()
def blob(env: Env, client: TestClient) -> tuple[str, bytes]:
    data = env.artifact(1, onnx_bytes=helpers.tiny_classifier(0, extra_rows=600))
    body = publish(client, data)
    payload = A.read_artifact(data).payload
    assert len(payload) > 1000
    return body["payload"]["sha256"], payload


def get(client: TestClient, sha: str, **headers: str) -> Any:
    return client.get(f"/v1/blobs/{sha}", headers={**ADMIN, **headers})


def test_whole_blob_with_validators(client: TestClient, blob: tuple[str, bytes]) -> None:
    sha, payload = blob
    r = get(client, sha)
    assert r.status_code == 200 and r.content == payload
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{sha}"'
    assert int(r.headers["content-length"]) == len(payload)


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("bytes=0-99", 0, 100),  # first bytes
        ("bytes=100-599", 100, 600),  # middle
        ("bytes=-250", None, None),  # suffix: the last 250
        ("bytes=500-", 500, None),  # resume from an offset
        ("bytes=10-999999999", 10, None),  # end past the end is clamped
    ],
)
def test_range_request_is_206_with_exactly_those_bytes(
    client: TestClient, blob: tuple[str, bytes], spec: str, start: int | None, stop: int | None
) -> None:
    sha, payload = blob
    size = len(payload)
    if start is None:
        start, stop = size - 250, size
    stop = size if stop is None else stop
    r = get(client, sha, Range=spec)
    assert r.status_code == 206, r.text
    assert r.content == payload[start:stop]
    assert r.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
    assert int(r.headers["content-length"]) == stop - start


@pytest.mark.parametrize("spec", ["bytes=999999-", "bytes=-0"])
def test_range_past_the_end_is_416(client: TestClient, blob: tuple[str, bytes], spec: str) -> None:
    sha, payload = blob
    r = get(client, sha, Range=spec)
    assert_problem(r, 416, "range-not-satisfiable")
    assert r.headers["content-range"] == f"bytes */{len(payload)}"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-9", "items=0-5", "bytes=9-3", "bytes=abc", "bytes=--5"])
def test_range_the_server_does_not_serve_falls_back_to_the_whole_blob(
    client: TestClient, blob: tuple[str, bytes], spec: str
) -> None:
    sha, payload = blob
    r = get(client, sha, Range=spec)
    assert r.status_code == 200 and r.content == payload


def test_if_range_for_another_blob_gets_the_whole_blob(client: TestClient, blob: tuple[str, bytes]) -> None:
    sha, payload = blob
    assert get(client, sha, Range="bytes=0-9", **{"If-Range": f'"{sha}"'}).status_code == 206
    r = get(client, sha, Range="bytes=0-9", **{"If-Range": '"0000"'})
    assert r.status_code == 200 and r.content == payload


def test_if_none_match_is_304(client: TestClient, blob: tuple[str, bytes]) -> None:
    sha, _ = blob
    r = get(client, sha, **{"If-None-Match": f'"{sha}"'})
    assert r.status_code == 304 and r.content == b""


def test_head_reports_size_without_a_body(client: TestClient, blob: tuple[str, bytes]) -> None:
    sha, payload = blob
    r = client.head(f"/v1/blobs/{sha}", headers=ADMIN)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == len(payload)


def test_unknown_blob_is_404(client: TestClient) -> None:
    assert_problem(get(client, "0" * 64), 404, "blob-not-found")
    assert_problem(get(client, "not-a-digest"), 422)


def test_signed_url_works_without_a_token_until_it_expires(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    token = enroll(client, "dev-1")
    url = client.get("/v1/device/update?current_version=0", headers=bearer(token)).json()["download"]["url"]
    if env.storage == "s3":  # presigned by S3 itself; also serves ranges
        assert urlsplit(url).netloc == urlsplit(env.s3_endpoint or "").netloc
        r = download(client, url, headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and len(r.content) == 10
        return
    assert download(client, url).status_code == 200
    r = download(client, url, headers={"Range": "bytes=5-14"})
    assert r.status_code == 206 and len(r.content) == 10
    query = parse_qs(urlsplit(url).query)
    sha = urlsplit(url).path.rsplit("/", 1)[1]
    expired = int(time.time()) - 1
    signer = Signer(env.base["secret_key"])
    stale = f"/v1/blobs/{sha}?expires={expired}&sig={signer.url_signature(sha, expired)}"
    assert_problem(client.get(stale), 403)
    forged = f"/v1/blobs/{sha}?expires={query['expires'][0]}&sig={'A' * 27}"
    assert_problem(client.get(forged), 403)
    other_blob = f"/v1/blobs/{'0' * 64}?expires={query['expires'][0]}&sig={query['sig'][0]}"
    assert_problem(client.get(other_blob), 403)  # a signature is for one blob only


def test_blob_bytes_are_counted(client: TestClient, blob: tuple[str, bytes]) -> None:
    sha, payload = blob
    get(client, sha)
    get(client, sha, Range="bytes=0-99")
    text = client.get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("ota_blob_bytes_sent_total"))
    assert float(line.split()[1]) == len(payload) + 100


@pytest.mark.parametrize("name", ["\U000be833", "é" * 64])
def test_a_blob_name_that_is_no_digest_is_422_with_or_without_a_signature(client: TestClient, name: str) -> None:
    assert_problem(client.get(f"/v1/blobs/{name}", params={"expires": 1, "sig": "x"}), 422, "invalid-request")
    assert client.head(f"/v1/blobs/{name}", params={"expires": 1, "sig": "x"}).status_code == 422  # no body
    assert_problem(client.get(f"/v1/blobs/{name}", headers=ADMIN), 422)
