"""The artifact file: the one unit a builder uploads.

Layout (all integers big-endian)::

    magic      8 bytes   b"OTAMODL1"
    u32        length of the manifest bytes (≤ 64 KiB), then the canonical manifest bytes
    u32        length of the signatures (≤ 64 KiB), then their canonical JSON list
    u64        length of the payload, then the payload bytes — and nothing after it

The file is self-delimiting so that a truncated or padded upload is caught before any parsing of
its content, with an error that says which part is short. Manifest and signatures come first, so a
reader of a large file (the server's upload spool) can verify them with :func:`read_artifact_head`
before a single payload byte is read.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from .errors import ArtifactFormatError
from .keys import Signature
from .manifest import MAX_MANIFEST_BYTES, canonical_json

MAGIC = b"OTAMODL1"
MAX_SIGNATURES_BYTES = 64 * 1024
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class ArtifactFile:
    """The three parts of an artifact file, not yet verified."""

    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    payload: bytes

    def signature_dicts(self) -> list[dict[str, str]]:
        return [s.to_dict() for s in self.signatures]


def encode_signatures(signatures: Sequence[Signature]) -> bytes:
    return canonical_json([s.to_dict() for s in signatures])


def decode_signatures(data: bytes) -> tuple[Signature, ...]:
    try:
        value = json.loads(data.decode("utf-8"))
        if not isinstance(value, list):
            raise ValueError("not a list")
        return tuple(Signature.from_dict(v) for v in value)
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactFormatError(f"signature block is not a JSON list of {{keyid, sig}} objects: {e}") from e


def write_artifact(out: BinaryIO, manifest_bytes: bytes, signatures: Sequence[Signature], payload: bytes) -> int:
    """Write an artifact file to `out`; returns the number of bytes written."""
    sig_bytes = encode_signatures(signatures)
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise ArtifactFormatError(f"manifest is {len(manifest_bytes)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    parts = [
        MAGIC,
        _U32.pack(len(manifest_bytes)),
        manifest_bytes,
        _U32.pack(len(sig_bytes)),
        sig_bytes,
        _U64.pack(len(payload)),
        payload,
    ]
    for p in parts:
        out.write(p)
    return sum(len(p) for p in parts)


def artifact_bytes(manifest_bytes: bytes, signatures: Sequence[Signature], payload: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    write_artifact(buf, manifest_bytes, signatures, payload)
    return buf.getvalue()


class _Cursor:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ArtifactFormatError(
                f"artifact is truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} remain"
            )
        chunk = bytes(self.data[self.pos : end])
        self.pos = end
        return chunk


@dataclass(frozen=True)
class ArtifactHead:
    """Manifest and signatures of an artifact file, and where its payload lies (not read yet)."""

    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    payload_offset: int
    payload_length: int


class _StreamCursor:
    def __init__(self, stream: BinaryIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.total:
            raise ArtifactFormatError(
                f"artifact is truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {self.total - self.pos} remain"
            )
        chunk = self.stream.read(n)
        if len(chunk) != n:
            raise ArtifactFormatError(f"artifact is truncated: {what} ended early at offset {self.pos}")
        self.pos += n
        return chunk


def _split(cur: _Cursor | _StreamCursor) -> tuple[bytes, tuple[Signature, ...], int]:
    magic = cur.take(len(MAGIC), "the magic number")
    if magic != MAGIC:
        raise ArtifactFormatError(f"not an OTA model artifact (magic {magic!r}, expected {MAGIC!r})")
    (mlen,) = _U32.unpack(cur.take(4, "the manifest length"))
    if mlen > MAX_MANIFEST_BYTES:
        raise ArtifactFormatError(f"manifest length {mlen} exceeds the {MAX_MANIFEST_BYTES}-byte limit")
    manifest = cur.take(mlen, "the manifest")
    (slen,) = _U32.unpack(cur.take(4, "the signatures length"))
    if slen > MAX_SIGNATURES_BYTES:
        raise ArtifactFormatError(f"signature block length {slen} exceeds the {MAX_SIGNATURES_BYTES}-byte limit")
    signatures = decode_signatures(cur.take(slen, "the signatures"))
    (plen,) = _U64.unpack(cur.take(8, "the payload length"))
    return manifest, signatures, plen


def read_artifact_head(stream: BinaryIO, total_length: int) -> ArtifactHead:
    """Read manifest and signatures from a file of `total_length` bytes positioned at its start; the
    stream is left at the payload's first byte. The payload length must fill the file exactly."""
    cur = _StreamCursor(stream, total_length)
    manifest, signatures, plen = _split(cur)
    if cur.pos + plen > total_length:
        raise ArtifactFormatError(
            f"artifact is truncated: the payload needs {plen} bytes at offset {cur.pos}, "
            f"only {total_length - cur.pos} remain"
        )
    if cur.pos + plen < total_length:
        raise ArtifactFormatError(f"artifact has {total_length - cur.pos - plen} unexpected bytes after the payload")
    return ArtifactHead(manifest, signatures, cur.pos, plen)


def read_artifact(data: bytes | memoryview) -> ArtifactFile:
    """Split an artifact file into its parts; raises :class:`ArtifactFormatError` naming what is wrong."""
    cur = _Cursor(data)
    manifest, signatures, plen = _split(cur)
    payload = cur.take(plen, "the payload")
    if cur.pos != len(cur.data):
        raise ArtifactFormatError(f"artifact has {len(cur.data) - cur.pos} unexpected bytes after the payload")
    return ArtifactFile(manifest, signatures, payload)
