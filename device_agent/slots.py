"""Two model slots on disk and the pointer that names the active one (A/B, as on firmware).

::

    DIR/slots/a.onnx            the decoded model (exactly the bytes the manifest's onnx.sha256 signs)
    DIR/slots/a.manifest.json   the signed manifest bytes, as received
    DIR/slots/a.signatures.json the signature list
    DIR/slots/a.meta.json       {"verified_at", "validated_at"}: written only once the golden set passed
    DIR/slots/b.*               the other slot
    DIR/slots/active            "a" or "b"

A new model is written to the inactive slot, file by file, each atomically; only then does the
pointer move (one atomic rename), so a crash at any moment leaves the active slot whole. Writing
and fsyncing are separate calls (`write`, then `sync`) so that the agent can let the disk flush
while the CPU validates the model; `sync` is the barrier the pointer waits for.

The meta file is the slot's certificate: :meth:`mark_validated` writes it after the golden set
passed, and a slot without it is never served. A model that failed validation therefore cannot
come back as the fallback when the active slot is damaged. Loading
a slot sends everything back through the door: signature by a trusted key and the ONNX hash.
Expiry is judged at `verified_at`: expiry bounds how long an offer may be *installed*, and a
device must not stop serving a model it installed in time (DESIGN.md leaves this open; recorded
in docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import artifact as A

from .errors import SlotError
from .fsutil import Disk, fsync_files, read_json, remove_stale_temps

log = logging.getLogger(__name__)
SLOTS = ("a", "b")


@dataclass(frozen=True)
class SlotContent:
    slot: str
    verified: A.VerifiedManifest
    onnx: bytes

    @property
    def version(self) -> int:
        return self.verified.manifest.version


def _ensure_dir(disk: Disk, root: Path) -> bool:
    """DIR/slots as a directory; True when a file in its place was removed. A read-only model
    directory without one serves nothing, but must not stop the agent from starting."""
    try:
        return disk.make_dir(root)
    except OSError as e:
        log.error("%s cannot be made: %s", root, e)
        return False


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


class SlotStore:
    """DIR/slots. `shared` (the simulator) stores each distinct ONNX file once and hard-links it."""

    def __init__(
        self, root: Path, *, durable: bool = True, shared: Path | None = None, disk: Disk | None = None
    ) -> None:
        self.root = root
        self.durable = durable
        self.shared = shared
        self.disk = disk or Disk()
        self._pointer: str | None = None  # the slot this process made active: trusted over a rotting file
        self.reset = _ensure_dir(self.disk, root)
        remove_stale_temps(root)

    def _path(self, slot: str, suffix: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}")
        return self.root / f"{slot}.{suffix}"

    def active(self) -> str | None:
        """The slot the pointer names; None when there is none or it cannot be read (a flipped bit, a
        directory in its place …): boot then chooses by verifying both slots and rewrites it."""
        if self._pointer is not None:
            return self._pointer
        try:
            name = (self.root / "active").read_bytes().decode("ascii").strip()
        except (OSError, ValueError):
            return None
        return name if name in SLOTS else None

    def assume_active(self, slot: str) -> None:
        """Treat `slot` as active in this process although the pointer file could not be rewritten."""
        self._pointer = slot

    def inactive(self) -> str:
        current = self.active()
        return "a" if current is None else other(current)

    def activate(self, slot: str, *, sync: bool = True) -> None:
        """Move the pointer: the one atomic step that makes a slot the model served after a restart.

        `sync=False` renames at once and leaves the directory fsync to :meth:`sync_pointer`.
        """
        self.disk.write_atomic(self.root / "active", f"{slot}\n".encode(), durable=self.durable and sync)
        self._pointer = slot

    def sync_pointer(self) -> None:
        """fsync the pointer and the active slot's meta file (both renamed without it)."""
        active = self.active()
        if self.durable and active is not None:
            fsync_files([self.root / "active", self._path(active, "meta.json")])

    def sync(self, slot: str) -> None:
        """fsync a slot written by :meth:`write`: the barrier before :meth:`activate` may name it."""
        if self.durable:
            fsync_files([self._path(slot, s) for s in ("onnx", "manifest.json", "signatures.json")])

    def write(self, slot: str, verified: A.VerifiedManifest, onnx: bytes) -> None:
        """Fill `slot` with a verified model (page cache only: call :meth:`sync` before activating it)."""
        if slot == self.active():
            raise ValueError(f"slot {slot} is active; a new model goes to the other slot")
        self._path(slot, "meta.json").unlink(missing_ok=True)  # not servable until validated again
        try:
            self._write_onnx(self._path(slot, "onnx"), onnx, verified.manifest.onnx.sha256)
            self.disk.write_atomic(self._path(slot, "manifest.json"), verified.manifest_bytes, durable=False)
            sigs = [s.to_dict() for s in verified.signatures]
            self.disk.write_json(self._path(slot, "signatures.json"), sigs, durable=False)
        except OSError:
            self.discard(slot)  # a half-written slot is worth nothing, and a full disk needs the space
            raise

    def discard(self, slot: str) -> None:
        """Remove an inactive slot's files (never the active one's)."""
        if slot == self.active():
            return
        for suffix in ("meta.json", "onnx", "manifest.json", "signatures.json"):
            self._path(slot, suffix).unlink(missing_ok=True)

    def holds_validated(self, slot: str) -> bool:
        """The slot carries its certificate: it is a fallback a new model must not overwrite unvalidated."""
        return self._path(slot, "meta.json").exists()

    def mark_validated(self, slot: str, verified_at: datetime) -> None:
        """The slot's model passed the golden set. Made durable by :meth:`sync_pointer`."""
        meta = {"verified_at": A.format_time(verified_at), "validated_at": A.format_time(datetime.now(UTC))}
        self.disk.write_json(self._path(slot, "meta.json"), meta, durable=False)

    def _write_onnx(self, path: Path, onnx: bytes, sha256: str) -> None:
        if self.shared is None:
            self.disk.write_atomic(path, onnx, durable=False)
            return
        self.shared.mkdir(parents=True, exist_ok=True)
        blob = self.shared / f"{sha256}.onnx"
        if not blob.exists():
            self.disk.write_atomic(blob, onnx, durable=self.durable)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
        tmp.unlink(missing_ok=True)
        os.link(blob, tmp)
        os.replace(tmp, path)

    def read_onnx(self, slot: str) -> bytes:
        """The raw model bytes (the base a delta applies to; the delta checks its base's hash)."""
        try:
            return self._path(slot, "onnx").read_bytes()
        except OSError as e:
            raise SlotError(f"slot {slot}: cannot read the model: {e}") from e

    def load(self, slot: str, *, trust: A.TrustPolicy, model: str, staged: bool = False) -> SlotContent:
        """Re-verify a slot through the door. SlotError: files missing or never validated; ArtifactError:
        content refused. `staged`: a slot written but not validated yet (an install resumed after a crash)."""
        try:
            manifest_bytes = self._path(slot, "manifest.json").read_bytes()
            signatures = read_json(self._path(slot, "signatures.json"))
            meta = None if staged else read_json(self._path(slot, "meta.json"))
            onnx = self._path(slot, "onnx").read_bytes()
        except (OSError, ValueError) as e:
            raise SlotError(f"slot {slot} is incomplete: {e}") from e
        if not isinstance(signatures, list):
            raise SlotError(f"slot {slot} is incomplete: no signature list")
        verified_at = datetime.now(UTC)
        if not staged:
            if not isinstance(meta, dict) or not isinstance(meta.get("verified_at"), str) or "validated_at" not in meta:
                raise SlotError(f"slot {slot} holds no validated model")
            try:
                verified_at = A.parse_time(meta["verified_at"])
            except ValueError as e:
                raise SlotError(f"slot {slot}: {e}") from e
        # installed_version=None: the installed version must not count as a downgrade of itself.
        verified = A.verify_manifest(manifest_bytes, signatures, trust=trust, expected_model=model, now=verified_at)
        return SlotContent(slot, verified, A.verify_onnx(verified, onnx, what=f"slot {slot} ONNX model"))

    def version(self, slot: str) -> int | None:
        """The version a slot claims, unverified: for status displays only."""
        try:
            data = read_json(self._path(slot, "manifest.json"))
        except (OSError, ValueError):
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, int) else None
