"""Model-aware deltas between two ONNX models, byte-exact.

Generic binary diffs (bsdiff, xdelta, zstd with a dictionary) find nothing to reuse once a
fine-tune has moved every weight a little: the float bits differ everywhere. This format works per
tensor instead:

1. The top-level initializers' `raw_data` ranges are cut out of both files (see `_onnxwire`); what
   remains of the new file, the *skeleton* (graph, names, attributes), is zstd-compressed with the
   old skeleton as a raw-content dictionary.
2. Each new tensor is matched to an old one by name (or, if renamed, by identical content) and sent
   as one of: a reference (unchanged), the element-wise integer difference zigzag-coded (small
   float moves and ±1 quantized steps become small numbers), the XOR of the bit patterns, or raw —
   whichever has the lowest byte entropy.
3. Transformed tensors are split into byte planes per element width (all low bytes together, all
   high bytes together …) and each plane is zstd-compressed on its own, so that the near-constant
   sign/exponent planes cost almost nothing and the noisy mantissa planes get their own tables.

A model that cannot be parsed, or one with nothing in common, degrades gracefully: with no tensor
matched, the format is a zstd stream of the new file against the old one, about the size of the
full payload. The header carries the format version and the sha256 of base and result, so applying
a delta to the wrong base fails before any work, and a corrupted delta fails on the result hash.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from ._onnxwire import TensorSpan, WireError, initializer_spans
from .codec import inflate_bounded
from .errors import DeltaBaseMismatchError, DeltaFormatError, DeltaResultError, PayloadError

MAGIC = b"OTADLTA1"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sB32s32sQQ")  # magic, version, base sha, result sha, result length, base length
_ENTRY = np.dtype([("offset", ">u8"), ("length", ">u8"), ("method", "u1"), ("elem", "u1"), ("old", ">u4")])
_U64 = struct.Struct(">Q")

SAME, RAW, SUB, XOR = 0, 1, 2, 3
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
MAX_RESULT = 1 << 31  # 2 GiB: far above any edge model, and a bound on what a delta may ask for


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta's header says, readable without the base."""

    format_version: int
    base_sha256: str
    result_sha256: str
    result_length: int
    base_length: int


def _words(data: bytes | memoryview, elem: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(_UINT[elem]).newbyteorder("<"))


def _forward(method: int, new: np.ndarray, old: np.ndarray | None, elem: int) -> np.ndarray:
    """Transform new words against old words; the result is unsigned words of width `elem`."""
    if method == RAW or old is None:
        return new
    if method == XOR:
        out: np.ndarray = new ^ old
        return out
    diff = (new - old).view(_SIGNED[elem])  # wraps modulo 2^(8·elem)
    bits = elem * 8
    zigzag: np.ndarray = ((diff << 1) ^ (diff >> (bits - 1))).view(_UINT[elem])  # small |d| → small code
    return zigzag


def _inverse(method: int, coded: np.ndarray, old: np.ndarray | None, elem: int) -> np.ndarray:
    if method == RAW or old is None:
        return coded
    if method == XOR:
        out: np.ndarray = coded ^ old
        return out
    one = _UINT[elem](1)
    diff = (coded >> one) ^ (np.zeros_like(coded) - (coded & one))  # un-zigzag
    rebuilt: np.ndarray = old + diff
    return rebuilt


def _plane_entropy(words: np.ndarray, elem: int) -> float:
    """Order-0 entropy in bytes of each byte plane, summed: a cheap stand-in for compressed size."""
    planes = words.view(np.uint8).reshape(-1, elem)
    total = 0.0
    for p in range(elem):
        counts = np.bincount(planes[:, p], minlength=256)
        probs = counts[counts > 0] / planes.shape[0]
        total += float(-(probs * np.log2(probs)).sum()) * planes.shape[0] / 8
    return total


def _compress(data: bytes, level: int, dict_data: bytes | None = None) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(data), write_checksum=False, write_content_size=True
    )
    zdict = zstandard.ZstdCompressionDict(dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if dict_data else None
    return zstandard.ZstdCompressor(compression_params=params, dict_data=zdict).compress(data)


def _skeleton(buf: bytes, spans: list[TensorSpan]) -> bytes:
    parts, pos = [], 0
    for s in spans:
        parts.append(buf[pos : s.start])
        pos = s.end
    parts.append(buf[pos:])
    return b"".join(parts)


def _spans(buf: bytes) -> list[TensorSpan]:
    try:
        return initializer_spans(buf)
    except WireError:
        return []  # not ONNX (or damaged): the whole file is skeleton, diffed generically


def make_delta(old: bytes, new: bytes, *, level: int = 19, data_level: int = 9) -> bytes:
    """Encode `new` relative to `old`; `apply_delta(old, result) == new` byte for byte."""
    old_spans, new_spans = _spans(old), _spans(new)
    by_name = {s.name: i for i, s in enumerate(old_spans)}
    by_content: dict[bytes, int] = {}
    old_hashes = [hashlib.sha256(old[s.start : s.end]).digest() for s in old_spans]
    for i, h in enumerate(old_hashes):
        by_content.setdefault(h, i)

    entries = np.zeros(len(new_spans), dtype=_ENTRY)
    groups: dict[int, list[np.ndarray]] = {}
    skeleton_offset = 0
    prev_end = 0
    for n, span in enumerate(new_spans):
        skeleton_offset += span.start - prev_end
        prev_end = span.end
        data = new[span.start : span.end]
        digest = hashlib.sha256(data).digest()
        i = by_name.get(span.name, -1)
        if i >= 0 and old_hashes[i] == digest:
            method, elem, ref = SAME, 1, i
        elif i < 0 and digest in by_content:
            method, elem, ref = SAME, 1, by_content[digest]
        else:
            elem = span.element_size
            new_words = _words(data, elem)
            ref, method, coded = 0, RAW, new_words
            if i >= 0 and old_spans[i].length == span.length:
                ref = i
                old_words = _words(old[old_spans[i].start : old_spans[i].end], elem)
                best = _plane_entropy(new_words, elem)
                for candidate in (SUB, XOR):
                    trial = _forward(candidate, new_words, old_words, elem)
                    size = _plane_entropy(trial, elem)
                    if size < best:
                        best, method, coded = size, candidate, trial
            groups.setdefault(elem, []).append(coded)
        entries[n] = (skeleton_offset, span.length, method, elem, ref)

    body = [
        _compress(entries.tobytes(), level),
        _compress(_skeleton(new, new_spans), level, _skeleton(old, old_spans) or None),
    ]
    planes_out = [struct.pack(">B", len(groups))]
    for elem in sorted(groups):
        words = np.concatenate(groups[elem])
        planes = words.view(np.uint8).reshape(-1, elem).T  # plane-major: all byte 0s, then all byte 1s …
        planes_out.append(struct.pack(">BQ", elem, words.size))
        for p in range(elem):
            frame = _compress(np.ascontiguousarray(planes[p]).tobytes(), data_level)
            planes_out.append(_U64.pack(len(frame)) + frame)
    body.append(b"".join(planes_out))

    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, hashlib.sha256(old).digest(), hashlib.sha256(new).digest(), len(new), len(old)
    )
    return header + _U64.pack(len(entries)) + b"".join(_U64.pack(len(s)) + s for s in body[:2]) + body[2]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DeltaFormatError(f"delta is truncated in {what}")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self.take(8, what))[0]
        return value

    def frame(self, what: str) -> bytes:
        return self.take(self.u64(what), what)


def read_delta_header(delta: bytes) -> DeltaInfo:
    """Parse a delta's header; raises :class:`DeltaFormatError` for anything that is not a delta."""
    if len(delta) < _HEADER.size:
        raise DeltaFormatError(f"delta is {len(delta)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, base, result, result_len, base_len = _HEADER.unpack_from(delta)
    if magic != MAGIC:
        raise DeltaFormatError("not a model delta (bad magic number)")
    if version != FORMAT_VERSION:
        raise DeltaFormatError(f"delta format version {version} is not supported (this build reads {FORMAT_VERSION})")
    if result_len > MAX_RESULT:
        raise DeltaFormatError(f"delta claims a {result_len}-byte result, beyond the {MAX_RESULT}-byte limit")
    return DeltaInfo(version, base.hex(), result.hex(), result_len, base_len)


def _inflate(frame: bytes, limit: int, what: str, dict_data: bytes | None = None) -> bytes:
    try:
        return inflate_bounded(frame, limit, what=what, dict_data=dict_data)
    except PayloadError as e:
        raise DeltaFormatError(f"delta {what} is corrupt: {e}") from e


def apply_delta(old: bytes, delta: bytes) -> bytes:
    """Rebuild the new model from `old` and a delta made by :func:`make_delta`."""
    info = read_delta_header(delta)
    if len(old) != info.base_length or hashlib.sha256(old).hexdigest() != info.base_sha256:
        raise DeltaBaseMismatchError(
            f"delta was made against base sha256 {info.base_sha256[:16]}…, "
            f"not this model ({hashlib.sha256(old).hexdigest()[:16]}…)"
        )
    r = _Reader(delta)
    r.pos = _HEADER.size
    count = r.u64("the entry count")
    if count * _ENTRY.itemsize > info.result_length + _ENTRY.itemsize * 1024:
        raise DeltaFormatError(f"delta lists an implausible {count} tensors")
    entries = np.frombuffer(
        _inflate(r.frame("the tensor index"), count * _ENTRY.itemsize, "tensor index"), dtype=_ENTRY
    )
    if entries.size != count:
        raise DeltaFormatError("delta tensor index is truncated")
    old_spans = _spans(old)
    skeleton = _inflate(r.frame("the skeleton"), info.result_length, "skeleton", _skeleton(old, old_spans) or None)

    # Byte planes → one word stream per element width.
    streams: dict[int, np.ndarray] = {}
    (n_groups,) = struct.unpack(">B", r.take(1, "the plane groups"))
    for _ in range(n_groups):
        elem, n_words = struct.unpack(">BQ", r.take(9, "a plane group header"))
        if elem not in _UINT or n_words * elem > info.result_length:
            raise DeltaFormatError(f"delta plane group has element width {elem} and {n_words} words")
        planes = np.empty((elem, n_words), dtype=np.uint8)
        for p in range(elem):
            plane = _inflate(r.frame("a byte plane"), n_words, "byte plane")
            if len(plane) != n_words:
                raise DeltaFormatError("delta byte plane is truncated")
            planes[p] = np.frombuffer(plane, dtype=np.uint8)
        streams[elem] = np.ascontiguousarray(planes.T).reshape(-1).view(np.dtype(_UINT[elem]).newbyteorder("<"))
    if r.pos != len(delta):
        raise DeltaFormatError(f"delta has {len(delta) - r.pos} unexpected trailing bytes")

    out = bytearray()
    cursors = dict.fromkeys(streams, 0)
    prev = 0
    for offset, length, method, elem, ref in entries.tolist():
        if offset < prev or offset > len(skeleton):
            raise DeltaFormatError("delta tensor index points outside the skeleton")
        out += skeleton[prev:offset]
        prev = offset
        base: TensorSpan | None = old_spans[ref] if ref < len(old_spans) else None
        if method == SAME:
            if base is None or base.length != length:
                raise DeltaFormatError("delta references a tensor the base does not have")
            out += old[base.start : base.end]
            continue
        if method not in (RAW, SUB, XOR) or elem not in streams or length % elem:
            raise DeltaFormatError(f"delta tensor entry is invalid (method {method}, width {elem})")
        n = length // elem
        coded = streams[elem][cursors[elem] : cursors[elem] + n]
        cursors[elem] += n
        if coded.size != n:
            raise DeltaFormatError("delta tensor data is shorter than its index says")
        old_words = None
        if method != RAW:
            if base is None or base.length != length:
                raise DeltaFormatError("delta diffs against a tensor the base does not have")
            old_words = _words(old[base.start : base.end], elem)
        out += _inverse(method, coded, old_words, elem).astype(np.dtype(_UINT[elem]).newbyteorder("<")).tobytes()
    out += skeleton[prev:]

    result = bytes(out)
    if len(result) != info.result_length or hashlib.sha256(result).hexdigest() != info.result_sha256:
        raise DeltaResultError("rebuilt model does not match the sha256 the delta promises: the delta is corrupt")
    return result
