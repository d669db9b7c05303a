"""The one storage interface: content-addressed blobs, byte ranges, download URLs.

Blobs are immutable and named by the sha256 of their bytes, so `put` of the same bytes is a no-op
and a reader can never get a half-written or changed blob. Backends raise only
:class:`~server.errors.BlobNotFoundError` and :class:`~server.errors.StorageUnavailableError`;
each translates its own library's exceptions where it calls that library.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import artifact as A

from ..errors import BlobNotFoundError

_SHA256 = re.compile(A.SHA256_HEX_PATTERN)
CHUNK = 256 * 1024


def is_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


def sha256_of(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob as a listing sees it (the storage GC's inventory)."""

    sha256: str
    size: int
    modified: datetime  # UTC; when it was written


class Storage(abc.ABC):
    """Content-addressed blob store. Ranges are half-open: ``[start, stop)``; ``stop=None`` = to the end."""

    #: short name for logs and /readyz ("file", "s3")
    kind: str

    @abc.abstractmethod
    def put(self, data: bytes | memoryview) -> str:
        """Store `data` under its sha256 (which is returned); storing existing bytes again is a no-op."""

    @abc.abstractmethod
    def size(self, sha256: str) -> int:
        """Length of a blob, or :class:`BlobNotFoundError`."""

    @abc.abstractmethod
    def open(self, sha256: str, *, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Stream a byte range in chunks; the blob's existence is checked before the first chunk."""

    def get(self, sha256: str, *, start: int = 0, stop: int | None = None) -> bytes:
        """A byte range read whole (for blobs the server itself needs, e.g. to build deltas)."""
        return b"".join(self.open(sha256, start=start, stop=stop))

    def exists(self, sha256: str) -> bool:
        try:
            self.size(sha256)
        except BlobNotFoundError:
            return False
        return True

    @abc.abstractmethod
    def list_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob, in no particular order (temporary files and foreign names are skipped)."""

    @abc.abstractmethod
    def delete(self, sha256: str) -> bool:
        """Remove a blob; True if it was there. Only the storage GC calls this (see :mod:`server.core.gc`)."""

    @abc.abstractmethod
    def url_for(self, sha256: str) -> str:
        """Where a device downloads the blob: an absolute presigned URL, or a server path ``/v1/blobs/…``."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageUnavailableError` unless the backend answers (for /readyz)."""

    def start(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Prepare the backend at server start (create a bucket …); failures are logged, not fatal."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
