"""The install checks: one function per way a model reaches a device, plus the download verifier.

Every consumer installs through these, after :func:`~artifact.verify.verify_manifest` has passed
once; none of them verifies the manifest again, and along one install each byte is hashed once::

    download ──▶ StreamVerifier ──▶ VerifiedBytes ─┐            (length capped while streaming)
                                                   ├▶ install_full(verified, payload)  → ONNX
    base ONNX + delta ─────────────────────────────┴▶ install_delta(verified, base, delta) → ONNX
    ONNX kept on disk ──────────────────────────────▶ verify_onnx(verified, onnx)      → ONNX

* :func:`install_full`: payload length and sha256 against the signed ones (skipped for
  :class:`VerifiedBytes` whose digest already is the signed one), bounded decode, then the ONNX
  bytes against the signed `onnx.length`/`onnx.sha256`.
* :func:`install_delta`: the length and digest the delta's header promises are compared with the
  signed ones first (nothing is inflated for a delta that promises another model), then
  :func:`~artifact.delta.apply_delta` checks the base's hash and hashes the rebuilt model against
  that digest, so the rebuilt bytes are hashed once, not twice.
* :func:`verify_onnx`: ONNX bytes that sat on disk (an A/B slot, a registry's store), checked
  against the signed length and sha256 again.

Errors are those of :mod:`artifact.errors`: lengths raise :class:`~artifact.errors.LengthError`
subclasses, digests :class:`~artifact.errors.HashMismatchError`, deltas the
:class:`~artifact.errors.DeltaError` family.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .codec import decode_payload
from .delta import apply_delta, read_delta_header
from .errors import HashMismatchError, TooLongError, TruncatedError
from .verify import DigestCheck, VerifiedManifest, check_bytes


@dataclass(frozen=True)
class VerifiedBytes:
    """Bytes a :class:`StreamVerifier` accepted: exactly `length` of them, hashing to `sha256`."""

    data: bytes
    sha256: str

    @property
    def length(self) -> int:
        return len(self.data)


class StreamVerifier:
    """Length and sha256 of a download, checked chunk by chunk as it arrives.

    :meth:`update` raises :class:`TooLongError` on the first chunk that would go past `length`, so a
    caller that writes only what `update` accepted never stores a byte past it. The accepted bytes
    are kept, and :meth:`finish` hands them back as :class:`VerifiedBytes` once the length is complete
    and the sha256 matches, so that installing them does not hash them again. A resumed download
    feeds the bytes it already has through a fresh verifier first, then the rest as it arrives.
    """

    def __init__(self, length: int, sha256: str, what: str) -> None:
        self._check = DigestCheck(length, sha256, what)
        self._data = bytearray()

    @classmethod
    def payload(cls, verified: VerifiedManifest) -> StreamVerifier:
        """A verifier for the signed payload of `verified`."""
        p = verified.manifest.payload
        return cls(p.length, p.sha256, "payload")

    def restarted(self) -> StreamVerifier:
        """A fresh verifier with the same expectations (the download starts again from byte zero)."""
        return StreamVerifier(self.length, self.sha256, self.what)

    @property
    def length(self) -> int:
        return self._check.length

    @property
    def sha256(self) -> str:
        return self._check.sha256

    @property
    def what(self) -> str:
        return self._check.what

    @property
    def received(self) -> int:
        return self._check.received

    @property
    def remaining(self) -> int:
        return self._check.remaining

    def update(self, chunk: bytes | memoryview) -> None:
        self._check.update(chunk)  # TooLongError before anything is kept
        self._data += chunk

    def finish(self) -> VerifiedBytes:
        """:class:`TruncatedError` if bytes are missing, :class:`HashMismatchError` if the digest differs."""
        self._check.finish()
        data, self._data = bytes(self._data), bytearray()
        return VerifiedBytes(data, self.sha256)


def _check_digest(length: int, sha256: str, *, signed_length: int, signed_sha256: str, what: str) -> None:
    """Compare an already computed length and digest with the signed ones (no hashing)."""
    if length > signed_length:
        raise TooLongError(f"{what} is longer than the signed {signed_length} bytes")
    if length < signed_length:
        raise TruncatedError(f"{what} ended after {length} of {signed_length} bytes")
    if not hmac.compare_digest(sha256, signed_sha256):
        raise HashMismatchError(f"{what} sha256 is {sha256}, signed {signed_sha256}")


def install_full(verified: VerifiedManifest, payload: bytes | VerifiedBytes, *, what: str = "payload") -> bytes:
    """Full payload → verified ONNX bytes: payload length/sha256, bounded decode, ONNX length/sha256."""
    m = verified.manifest
    if isinstance(payload, VerifiedBytes):
        _check_digest(
            payload.length, payload.sha256, signed_length=m.payload.length, signed_sha256=m.payload.sha256, what=what
        )
        data = payload.data
    else:
        check_bytes(payload, length=m.payload.length, sha256=m.payload.sha256, what=what)
        data = payload
    onnx_bytes = decode_payload(data, encoding=m.payload.encoding, max_length=m.onnx.length)
    check_bytes(onnx_bytes, length=m.onnx.length, sha256=m.onnx.sha256, what="decoded ONNX model")
    return onnx_bytes


def install_delta(verified: VerifiedManifest, base: bytes, delta: bytes, *, what: str = "rebuilt ONNX model") -> bytes:
    """Base ONNX + delta → verified ONNX bytes.

    :class:`~artifact.errors.DeltaBaseMismatchError` for a delta made against another base,
    :class:`~artifact.errors.DeltaFormatError` / :class:`~artifact.errors.DeltaResultError` for a
    damaged one, and a length or hash error when the delta rebuilds a model other than the signed one.
    """
    # The header's promise first: a delta is unsigned, and one that claims a result other than the
    # signed model (say 2 GiB of zeros, a few KB compressed) is refused before anything is inflated.
    info = read_delta_header(delta)
    o = verified.manifest.onnx
    _check_digest(info.result_length, info.result_sha256, signed_length=o.length, signed_sha256=o.sha256, what=what)
    return apply_delta(base, delta)  # base and result hashed here, the result against the header


def verify_onnx(verified: VerifiedManifest, onnx_bytes: bytes, *, what: str = "ONNX model") -> bytes:
    """ONNX bytes kept on disk since they were installed, checked against the signed length and sha256."""
    o = verified.manifest.onnx
    check_bytes(onnx_bytes, length=o.length, sha256=o.sha256, what=what)
    return onnx_bytes
