"""Resumable, length-capped downloads into DIR/downloads (STYLE.md 4).

Bytes stream into `<sha256>.part`; every chunk passes an :class:`artifact.StreamVerifier` *before*
it is written, so the file never holds a byte past the signed (or offered) length, and
:class:`artifact.TooLongError` stops the transfer at the first extra chunk. The partial file
survives a restart and is resumed with `Range: bytes=N-`: its bytes go through the verifier from
disk first, so resumption costs a read, never trust. The verifier's :class:`artifact.VerifiedBytes`
are kept for :meth:`DownloadDir.read`, so that the install does not hash them a second time; a
blob found on disk (after a restart) passes a verifier once when it is read. A server that ignores
the range (200) restarts the file; one that answers 416 means our partial is bogus, and it is dropped.

Only complete bytes fetched from byte zero in one transfer can condemn a version: too many of
them (:class:`artifact.TooLongError`) or the wrong sha256. Everything else says nothing about the
version and is transient: a transfer that ends early (a short Content-Length, a connection closed
without one) keeps its partial file and resumes; a resumed file that fails its hash or runs long
may have been damaged by the crash that interrupted it (a power cut can leave zeros in a file's
tail) or by a server that answered a range with the whole file, so it is fetched once more from
byte zero; a finished `.blob` that no longer verifies was damaged on disk (it verified when it was
written) and is fetched again. A transfer slower than `min_rate` bytes/s over `stall_window`
seconds is cut (transient, resumed later): a 1 byte/s server cannot pin the update loop.

Before a byte is fetched the free space is checked against what the install will write (the rest of
the blob, plus the decoded model's slot); too little, or a write that finds the disk full, raises
:class:`~device_agent.errors.NoSpaceError` and the partial file is removed: a device with a full
disk keeps nothing of its own there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import artifact as A

from .errors import NoSpaceError, ProtocolError, TransientError
from .fsutil import Disk
from .protocol import ServerClient

log = logging.getLogger(__name__)
CHUNK = 1 << 16
SPARE = 1 << 20  # beyond blob and slot: the manifest, signatures, state and event files
Progress = Callable[[int, int], None]  # (bytes on disk, total)


@dataclass
class DownloadResult:
    path: Path
    received: int  # bytes that crossed the network in this call
    resumed_from: int  # bytes already on disk when this call started


class DownloadDir:
    """DIR/downloads: one `.part` per blob being fetched, `.blob` once it is complete and verified."""

    def __init__(
        self,
        root: Path,
        *,
        durable: bool = True,
        disk: Disk | None = None,
        min_rate: float = 1024.0,
        stall_window: float = 60.0,
    ) -> None:
        self.root = root
        self.durable = durable
        self.disk = disk or Disk()
        self.min_rate = min_rate  # bytes/s a transfer must keep up over `stall_window` seconds
        self.stall_window = stall_window
        self._verified: dict[str, A.VerifiedBytes] = {}  # blobs this process verified, until read
        try:
            self.reset = self.disk.make_dir(root)  # True: a file stood where the directory should be
        except OSError as e:  # a read-only directory: there will be nothing to download
            log.error("%s cannot be made: %s", root, e)
            self.reset = False

    def part(self, sha256: str) -> Path:
        return self.root / f"{sha256}.part"

    def blob(self, sha256: str) -> Path:
        return self.root / f"{sha256}.blob"

    def partial_size(self, sha256: str) -> int:
        try:
            return self.part(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, sha256: str, *, length: int, what: str) -> A.VerifiedBytes | None:
        """A completed download: as verified while it arrived, or checked again from disk; None if it
        is gone or was damaged on disk (then it is removed, and fetched again)."""
        verified = self._verified.pop(sha256, None)
        if verified is not None and verified.length == length and self.blob(sha256).exists():
            return verified
        return self._verified_on_disk(sha256, length=length, what=what)

    def _verified_on_disk(self, sha256: str, *, length: int, what: str) -> A.VerifiedBytes | None:
        """A `.blob` verified when it was written: if it no longer verifies, the disk damaged it."""
        path = self.blob(sha256)
        try:
            return self._verify_file(path, A.StreamVerifier(length, sha256, what))
        except FileNotFoundError:
            return None
        except (A.LengthError, A.HashMismatchError) as e:
            log.warning("downloaded %s was damaged on disk (%s); fetching it again", what, e)
            path.unlink(missing_ok=True)
            return None

    @staticmethod
    def _verify_file(path: Path, check: A.StreamVerifier) -> A.VerifiedBytes:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                check.update(chunk)
        return check.finish()

    def clear(self, keep: set[str] | None = None) -> None:
        """Remove every download except those named in `keep` (sha256s)."""
        self._verified = {k: v for k, v in self._verified.items() if keep and k in keep}
        try:
            paths = list(self.root.iterdir())
        except OSError:
            return
        for path in paths:
            if keep and path.name.split(".", 1)[0] in keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()

    async def fetch(
        self,
        client: ServerClient,
        url: str,
        *,
        length: int,
        sha256: str,
        what: str,
        progress: Progress | None = None,
        reserve: int = 0,
    ) -> DownloadResult:
        """The verified file for (`length`, `sha256`), fetched or resumed as needed. `reserve`: bytes
        the install will write once this file is complete (the decoded model's slot)."""
        done = self.blob(sha256)
        if sha256 in self._verified and done.exists():
            return DownloadResult(done, 0, length)
        if done.exists():
            on_disk = self._verified_on_disk(sha256, length=length, what=what)
            if on_disk is not None:
                self._verified[sha256] = on_disk
                return DownloadResult(done, 0, length)
        part = self.part(sha256)
        check, have = self._resume(part, A.StreamVerifier(length, sha256, what))
        resumed_from, received = have, 0
        if have < length:
            need = length - have + reserve + SPARE
            free = self.disk.free(self.root)
            if free < need:
                part.unlink(missing_ok=True)
                raise NoSpaceError(f"{what}: {need} bytes needed, {free} free")
            try:
                check, received, resumed_from = await self._stream(client, url, part, check, have, progress)
            except NoSpaceError:
                part.unlink(missing_ok=True)
                raise
        try:
            verified = check.finish()
        except A.TruncatedError as e:  # the transfer ended early: what arrived is kept, and resumed
            raise TransientError(f"{what}: transfer ended early ({e}); resuming later") from e
        except A.HashMismatchError:
            part.unlink(missing_ok=True)
            if resumed_from:
                raise TransientError(f"{what} resumed from byte {resumed_from} did not verify; restarting") from None
            raise
        if self.durable:
            with part.open("rb") as f:
                os.fsync(f.fileno())
        os.replace(part, done)
        self._verified[sha256] = verified
        return DownloadResult(done, received, resumed_from)

    @staticmethod
    def _resume(part: Path, check: A.StreamVerifier) -> tuple[A.StreamVerifier, int]:
        """Feed an existing partial file through `check`; drop it if it is already too long."""
        try:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    check.update(chunk)
        except FileNotFoundError:
            return check, 0
        except A.TooLongError:
            part.unlink(missing_ok=True)
            return check.restarted(), 0
        return check, check.received

    async def _stream(
        self,
        client: ServerClient,
        url: str,
        part: Path,
        check: A.StreamVerifier,
        have: int,
        progress: Progress | None,
    ) -> tuple[A.StreamVerifier, int, int]:
        """(verifier, bytes received now, bytes the transfer resumed from)."""
        received = 0
        async with client.open_blob(url, have) as response:
            if response.status == 416:
                part.unlink(missing_ok=True)
                raise TransientError(f"{check.what}: server refused to resume at byte {have}; restarting")
            if response.total is not None and response.total != check.length:
                raise ProtocolError(
                    f"{check.what}: server says the blob has {response.total} bytes, the offer {check.length}"
                )
            if response.start != have:  # 200 to a ranged request: the server sends everything again
                part.unlink(missing_ok=True)
                check = check.restarted()
            start = response.start
            last = window_start = time.monotonic()
            window_bytes = 0
            with self.disk.appending(part) as f:
                async for chunk in response.chunks:
                    try:
                        check.update(chunk)  # TooLongError here: the chunk is never written
                    except A.TooLongError:
                        if not start:
                            raise
                        part.unlink(
                            missing_ok=True
                        )  # a resumed transfer ran long: the server's, not the version's fault
                        raise TransientError(f"{check.what} resumed from byte {start} ran long; restarting") from None
                    f.write(chunk)
                    received += len(chunk)
                    window_bytes += len(chunk)
                    now = time.monotonic()
                    if progress is not None and now - last > 0.25:
                        f.flush()
                        progress(check.received, check.length)
                        last = now
                    if now - window_start >= self.stall_window:
                        if window_bytes < self.min_rate * (now - window_start):
                            raise TransientError(
                                f"{check.what}: {window_bytes} bytes in {now - window_start:.0f} s is below"
                                f" {self.min_rate:.0f} bytes/s; resuming later"
                            )
                        window_start, window_bytes = now, 0
        if progress is not None:
            progress(check.received, check.length)
        return check, received, start
