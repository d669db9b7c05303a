"""`file://` backend: blobs as files under a local directory (the embedded default).

Each blob is written with `artifact.write_atomic` (a temporary file in its final directory, fsynced,
renamed into place, the directory fsynced; mode 0600),
so a crash never leaves a partial blob under a real name. Blobs fan out by the first two hex
digits of their digest to keep directories small.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from artifact import write_atomic

from ..errors import BlobNotFoundError, StorageUnavailableError
from .base import CHUNK, BlobInfo, Storage, is_sha256, sha256_of
from .leftovers import is_leftover

log = logging.getLogger("ota.storage")


class FileStorage(Storage):
    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise BlobNotFoundError(f"{sha256!r} is not a sha256 digest")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes | memoryview) -> str:
        sha = sha256_of(data)
        path = self._path(sha)
        if path.exists():
            return sha
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, mode=0o600)
        except OSError as e:
            raise StorageUnavailableError(f"cannot write blob {sha[:12]}…: {e.strerror or e}") from e
        return sha

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError as e:
            raise BlobNotFoundError(f"no blob {sha256}") from e
        except OSError as e:
            raise StorageUnavailableError(f"cannot stat blob {sha256[:12]}…: {e.strerror or e}") from e

    def open(self, sha256: str, *, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        path = self._path(sha256)
        try:
            f = path.open("rb")
        except FileNotFoundError as e:
            raise BlobNotFoundError(f"no blob {sha256}") from e
        except OSError as e:
            raise StorageUnavailableError(f"cannot open blob {sha256[:12]}…: {e.strerror or e}") from e
        return self._chunks(f, start, stop, sha256)

    @staticmethod
    def _chunks(f: BinaryIO, start: int, stop: int | None, sha256: str) -> Iterator[bytes]:
        with f:
            try:
                f.seek(start)
                remaining = None if stop is None else max(0, stop - start)
                while remaining is None or remaining > 0:
                    chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
                    if not chunk:
                        return
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
            except OSError as e:
                raise StorageUnavailableError(f"cannot read blob {sha256[:12]}…: {e.strerror or e}") from e

    def list_blobs(self) -> Iterator[BlobInfo]:
        try:
            for path in self.root.glob("??/*"):
                if not is_sha256(path.name) or path.name[:2] != path.parent.name:
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted since the directory was read
                    continue
                yield BlobInfo(path.name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
        except OSError as e:
            raise StorageUnavailableError(f"cannot list blobs: {e.strerror or e}") from e

    def delete(self, sha256: str) -> bool:
        path = self._path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StorageUnavailableError(f"cannot delete blob {sha256[:12]}…: {e.strerror or e}") from e
        return True

    def url_for(self, sha256: str) -> str:
        return f"/v1/blobs/{sha256}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise OSError(errno.EACCES, "not writable")
        except OSError as e:  # the path goes to the log only: /readyz is public
            log.warning("blob directory %s unusable: %s", self.root, e)
            raise StorageUnavailableError(f"blob directory unusable: {e.strerror or type(e).__name__}") from e

    def start(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # not fatal: /readyz reports it, a request that needs storage gets a 503
            log.warning("blob directory %s cannot be created: %s", self.root, e)
            return
        self.sweep()

    def sweep(self) -> int:
        """Remove the temporary files (``.SHA.PID.THREAD.tmp``) of writers killed mid-blob; returns how many.

        A temporary file of a live process (another worker on this host writing now) is kept.
        """
        removed = 0
        now = time.time()
        for tmp in self.root.glob("??/.*.tmp"):
            try:
                pid_text = tmp.name.split(".")[2] if tmp.name.count(".") >= 3 else ""
                if is_leftover(pid_text, tmp.stat().st_mtime, now=now):
                    tmp.unlink()
                    removed += 1
            except OSError as e:
                log.warning("cannot remove temporary blob %s: %s", tmp, e)
        if removed:
            log.info("removed %d temporary blob file(s) left by stopped writers under %s", removed, self.root)
        return removed
