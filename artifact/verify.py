"""The one verification door.

Every consumer — the server when an artifact is uploaded, the agent before it installs one — goes
through these functions and the install checks built on them (:mod:`artifact.install`), and nothing
else in the code base checks signatures, expiry, versions, lengths or hashes. The door does no I/O:
callers fetch bytes and hand them in, possibly chunk by chunk, and get a verified object back or an
:class:`~artifact.errors.ArtifactError` subclass.

Order of the checks (DESIGN.md): schema → expected model → signature threshold over trusted keys →
expiry → downgrade → length (while streaming: never reads past it) → sha256. The payload is then
decoded with a bound at the signed ONNX length, and the ONNX bytes pass the same length/sha256 check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import (
    BadSignatureError,
    DowngradeError,
    ExpiredError,
    HashMismatchError,
    ModelMismatchError,
    RevokedKeyError,
    SignatureError,
    ThresholdError,
    TooLongError,
    TruncatedError,
    UnknownKeyError,
)
from .keys import Signature, VerifyKey
from .manifest import Manifest, parse_manifest


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys may sign, and how many distinct ones must.

    `revoked` names keys a keys document revoked (:mod:`artifact.trust`): they are never trusted,
    and an artifact signed only by them is refused with :class:`RevokedKeyError`, which names the key.
    """

    keys: Mapping[str, VerifyKey]
    threshold: int = 1
    revoked: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(self.keys)} trusted keys")
        if self.revoked & set(self.keys):
            raise ValueError("a revoked key cannot be trusted")

    @classmethod
    def of(cls, keys: Iterable[VerifyKey], threshold: int = 1) -> TrustPolicy:
        return cls(keys={k.keyid: k for k in keys}, threshold=threshold)


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest that passed schema, model, signature, expiry and downgrade checks."""

    manifest: Manifest
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    signed_by: tuple[str, ...] = field(default=())


def _parse_signatures(signatures: Sequence[Signature | Mapping[str, Any]]) -> list[Signature]:
    if not isinstance(signatures, Sequence) or isinstance(signatures, str | bytes):
        raise SignatureError("signatures must be a list of {keyid, sig} objects")
    parsed = []
    for i, s in enumerate(signatures):
        if isinstance(s, Signature):
            parsed.append(s)
            continue
        try:
            parsed.append(Signature.from_dict(s))
        except ValueError as e:
            raise SignatureError(f"signatures[{i}]: {e}") from e
    return parsed


def _check_signatures(message: bytes, signatures: list[Signature], trust: TrustPolicy) -> tuple[str, ...]:
    valid: list[str] = []
    forged: list[str] = []
    for s in signatures:
        key = trust.keys.get(s.keyid)
        if key is None or s.keyid in valid:
            continue
        try:
            raw = base64.b64decode(s.sig, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 64 and key.verify(raw, message):
            valid.append(s.keyid)
        else:
            forged.append(s.keyid)
    if len(valid) >= trust.threshold:
        return tuple(valid)
    revoked = [s.keyid for s in signatures if s.keyid in trust.revoked]
    if forged:
        raise BadSignatureError(
            f"signature by trusted key {forged[0][:16]}… does not verify: the manifest or signature was altered"
        )
    if revoked:
        raise RevokedKeyError(
            f"signed by revoked key {revoked[0]}: the current keys document revoked it"
            + (f"; {len(valid)} valid signature(s) from trusted keys, {trust.threshold} required" if valid else "")
        )
    if not valid:
        ids = ", ".join(s.keyid[:16] + "…" for s in signatures) or "none"
        raise UnknownKeyError(f"no signature by a trusted key (signed by: {ids})")
    raise ThresholdError(f"{len(valid)} valid signature(s) from trusted keys; {trust.threshold} required")


def verify_manifest(
    manifest_bytes: bytes,
    signatures: Sequence[Signature | Mapping[str, Any]],
    *,
    trust: TrustPolicy,
    expected_model: str | None,
    installed_version: int | None = None,
    now: datetime | None = None,
) -> VerifiedManifest:
    """Checks 1–5 of the door: schema, model name, signatures, expiry, downgrade.

    `expected_model=None` is for callers that learn the model from the manifest itself (the
    publisher's own `verify` command); consumers that install pass the name they serve.
    `installed_version` is the version the caller already has (the agent) or the latest one it
    knows (the server): the offered version must be strictly above it.
    """
    manifest = parse_manifest(manifest_bytes)
    if expected_model is not None and manifest.model != expected_model:
        raise ModelMismatchError(f"manifest is for model {manifest.model!r}, expected {expected_model!r}")
    sigs = _parse_signatures(signatures)
    signed_by = _check_signatures(manifest_bytes, sigs, trust)
    moment = now or datetime.now(UTC)
    expires = manifest.expires
    if expires is not None and moment >= expires:
        raise ExpiredError(f"manifest expired at {manifest.expires_at}")
    if installed_version is not None and manifest.version <= installed_version:
        raise DowngradeError(
            f"version {manifest.version} of {manifest.model!r} is not above the installed version {installed_version}"
        )
    return VerifiedManifest(manifest, manifest_bytes, tuple(sigs), signed_by)


class DigestCheck:
    """Length and sha256 of a byte stream, checked as it flows (the door's steps 6 and 7).

    `update` raises :class:`TooLongError` on the first chunk that goes past the expected length, so
    a caller that feeds a download through it never stores more than `length` bytes.
    """

    def __init__(self, length: int, sha256: str, what: str) -> None:
        self.length = length
        self.sha256 = sha256
        self.what = what
        self.received = 0
        self._hash = hashlib.sha256()

    @property
    def remaining(self) -> int:
        return self.length - self.received

    def update(self, chunk: bytes | memoryview) -> None:
        if len(chunk) > self.remaining:
            raise TooLongError(f"{self.what} is longer than the signed {self.length} bytes")
        self.received += len(chunk)
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.received < self.length:
            raise TruncatedError(f"{self.what} ended after {self.received} of {self.length} bytes")
        digest = self._hash.hexdigest()
        if not hmac.compare_digest(digest, self.sha256):
            raise HashMismatchError(f"{self.what} sha256 is {digest}, signed {self.sha256}")


def check_bytes(data: bytes | memoryview, *, length: int, sha256: str, what: str) -> None:
    """:class:`DigestCheck` over bytes already in memory."""
    check = DigestCheck(length, sha256, what)
    check.update(data)
    check.finish()


def read_verified(chunks: Iterable[bytes], *, length: int, sha256: str, what: str) -> bytes:
    """Collect a chunk stream through a :class:`DigestCheck`; stops at the first byte past `length`."""
    check = DigestCheck(length, sha256, what)
    out = bytearray()
    for chunk in chunks:
        check.update(chunk)
        out += chunk
    check.finish()
    return bytes(out)
