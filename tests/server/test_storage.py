"""The one storage interface, on both backends: content-addressed, ranged, failures translated."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest

from server.config import Settings
from server.errors import BlobNotFoundError, StorageUnavailableError
from server.storage import S3Storage, Storage, open_storage

from .conftest import closed_port


@pytest.fixture(params=["file", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def settings(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    if kind == "file":
        return Settings(storage_url=f"file://{tmp_path / 'blobs'}")
    endpoint = request.getfixturevalue("s3_endpoint")
    return Settings(storage_url=f"s3://ota-test/{uuid.uuid4().hex[:12]}", s3_endpoint_url=endpoint)


@pytest.fixture()
def storage(settings: Settings) -> Storage:
    s = open_storage(settings)
    s.start()
    return s


def test_put_is_content_addressed_and_idempotent(storage: Storage) -> None:
    data = os.urandom(5000)
    sha = storage.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert storage.put(data) == sha
    assert storage.exists(sha) and storage.size(sha) == 5000
    assert storage.get(sha) == data


@pytest.mark.parametrize(("start", "stop"), [(0, 10), (100, 2000), (4990, None), (4999, 5000), (0, None), (5000, None)])
def test_ranges_are_half_open(storage: Storage, start: int, stop: int | None) -> None:
    data = os.urandom(5000)
    sha = storage.put(data)
    assert storage.get(sha, start=start, stop=stop) == data[start:stop]
    assert b"".join(storage.open(sha, start=start, stop=stop)) == data[start:stop]


def test_missing_blob_is_not_found(storage: Storage) -> None:
    missing = "f" * 64
    assert not storage.exists(missing)
    with pytest.raises(BlobNotFoundError):
        storage.size(missing)
    with pytest.raises(BlobNotFoundError):
        storage.get(missing)


def test_download_url_is_presigned_for_s3_and_a_server_path_for_files(
    kind: str, settings: Settings, storage: Storage
) -> None:
    sha = storage.put(b"hello")
    url = storage.url_for(sha)
    if kind == "file":
        assert url == f"/v1/blobs/{sha}"
    else:
        assert url.startswith(f"{settings.s3_endpoint_url}/ota-test/") and "X-Amz-Signature=" in url
        assert storage.url_for(sha) == url  # reused for half its lifetime: no signing per poll


def test_s3_creates_its_bucket_and_uploads_large_blobs_in_parts(s3_endpoint: str) -> None:
    bucket = f"fresh-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        storage_url=f"s3://{bucket}/blobs",
        s3_endpoint_url=s3_endpoint,
        s3_multipart_threshold=5 * 1024 * 1024,
        s3_multipart_chunk=5 * 1024 * 1024,
    )
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.start()  # creates the bucket
    data = os.urandom(11 * 1024 * 1024)
    sha = storage.put(data)
    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    head = raw.head_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    assert storage.get(sha, start=6_000_000, stop=6_000_100) == data[6_000_000:6_000_100]


def test_unreachable_s3_is_storage_unavailable(s3_endpoint: str) -> None:
    with closed_port() as port:
        storage = open_storage(Settings(storage_url="s3://ota-test/x", s3_endpoint_url=f"http://127.0.0.1:{port}"))
    for call in (lambda: storage.put(b"x"), lambda: storage.size("a" * 64), storage.check):
        with pytest.raises(StorageUnavailableError):
            call()


def test_unwritable_directory_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    storage = open_storage(Settings(storage_url=f"file://{blocker}/blobs"))
    with pytest.raises(StorageUnavailableError):
        storage.put(b"x")
    with pytest.raises(StorageUnavailableError):
        storage.check()
