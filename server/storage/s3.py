"""`s3://bucket/prefix` backend: AWS S3, MinIO or any S3 API, through boto3.

Blobs are objects ``<prefix>/<sha[:2]>/<sha>``. Large blobs go up as multipart uploads (boto3's
transfer manager, above ``OTA_S3_MULTIPART_THRESHOLD``). Devices download with presigned GET URLs
(``OTA_DOWNLOAD_URL_SECONDS``); a URL is reused for half its lifetime, so the poll path does not
sign on every request. All botocore exceptions are translated here and nowhere else.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped]
from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from ..errors import BlobNotFoundError, StorageUnavailableError
from .base import CHUNK, BlobInfo, Storage, is_sha256, sha256_of

log = logging.getLogger("ota.storage")
# One botocore session per process: it caches the parsed service models, which makes every client
# after the first cheap to create. Creating clients from one session is not thread-safe: lock it.
_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Storage(Storage):
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        public_endpoint_url: str | None,
        region: str,
        url_seconds: int,
        multipart_threshold: int,
        multipart_chunk: int,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url_seconds = url_seconds
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        with _SESSION_LOCK:
            self._client: Any = _SESSION.client("s3", endpoint_url=endpoint_url, config=config)
            # Presigning is offline; a second client only changes the host written into the URL.
            self._presigner: Any = (
                _SESSION.client("s3", endpoint_url=public_endpoint_url, config=config)
                if public_endpoint_url
                else self._client
            )
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk)
        self._urls: dict[str, tuple[str, float]] = {}
        self._urls_lock = threading.Lock()

    def key(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise BlobNotFoundError(f"{sha256!r} is not a sha256 digest")
        return f"{self.prefix}/{sha256[:2]}/{sha256}" if self.prefix else f"{sha256[:2]}/{sha256}"

    def _unavailable(self, action: str, e: Exception) -> StorageUnavailableError:
        what = _code(e) if isinstance(e, ClientError) else type(e).__name__
        return StorageUnavailableError(f"object storage failed to {action} ({what})")

    def ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) not in _MISSING and _code(e) != "NoSuchBucket":
                raise self._unavailable("find the bucket", e) from e
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as e2:
                if _code(e2) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise self._unavailable("create the bucket", e2) from e2
            log.info("created bucket %s", self.bucket)
        except BotoCoreError as e:
            raise self._unavailable("reach the bucket", e) from e

    def start(self) -> None:
        try:
            self.ensure_bucket()
        except StorageUnavailableError as e:  # not fatal: /readyz reports it and put() retries
            log.warning("object storage not ready at start: %s", e.detail)

    def put(self, data: bytes | memoryview) -> str:
        sha = sha256_of(data)
        if self.exists(sha):
            return sha
        for attempt in (1, 2):
            try:
                self._client.upload_fileobj(io.BytesIO(data), self.bucket, self.key(sha), Config=self._transfer)
                return sha
            except ClientError as e:
                if _code(e) == "NoSuchBucket" and attempt == 1:
                    self.ensure_bucket()
                    continue
                raise self._unavailable("store a blob", e) from e
            except (BotoCoreError, S3UploadFailedError) as e:
                if "NoSuchBucket" in str(e) and attempt == 1:
                    self.ensure_bucket()
                    continue
                raise self._unavailable("store a blob", e) from e
        raise AssertionError("unreachable")

    def size(self, sha256: str) -> int:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as e:
            if _code(e) in _MISSING:
                raise BlobNotFoundError(f"no blob {sha256}") from e
            raise self._unavailable("stat a blob", e) from e
        except BotoCoreError as e:
            raise self._unavailable("stat a blob", e) from e
        return int(head["ContentLength"])

    def open(self, sha256: str, *, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        if stop is not None and stop <= start:
            self.size(sha256)  # still a 404 for a missing blob
            return iter(())
        byte_range = f"bytes={start}-" + ("" if stop is None else str(stop - 1))
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.key(sha256), Range=byte_range)
        except ClientError as e:
            if _code(e) in _MISSING:
                raise BlobNotFoundError(f"no blob {sha256}") from e
            if _code(e) == "InvalidRange":  # start at or past the end: an empty range, like a file
                return iter(())
            raise self._unavailable("read a blob", e) from e
        except BotoCoreError as e:
            raise self._unavailable("read a blob", e) from e
        return self._chunks(response["Body"])

    def _chunks(self, body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK)
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable("stream a blob", e) from e
        finally:
            body.close()

    def list_blobs(self) -> Iterator[BlobInfo]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    fan, _, name = str(obj["Key"])[len(prefix) :].partition("/")
                    if is_sha256(name) and fan == name[:2]:
                        yield BlobInfo(name, int(obj["Size"]), obj["LastModified"])
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable("list blobs", e) from e

    def delete(self, sha256: str) -> bool:
        present = self.exists(sha256)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable("delete a blob", e) from e
        with self._urls_lock:
            self._urls.pop(sha256, None)
        return present

    def url_for(self, sha256: str) -> str:
        now = time.monotonic()
        with self._urls_lock:
            cached = self._urls.get(sha256)
            if cached is not None and now - cached[1] < self.url_seconds / 2:
                return cached[0]
        try:
            url: str = self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha256)}, ExpiresIn=self.url_seconds
            )
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable("presign a download URL", e) from e
        with self._urls_lock:
            if len(self._urls) > 4096:
                self._urls.clear()
            self._urls[sha256] = (url, now)
        return url

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable("reach the bucket", e) from e

    def close(self) -> None:
        self._client.close()
        if self._presigner is not self._client:
            self._presigner.close()
