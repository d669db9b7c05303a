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
4. A tensor of which only a few words are non-zero after step 2 (a small correction) is sent
   sparse instead (`_sparse`): Golomb-Rice coded positions and the non-zero values — when that is
   smaller, per tensor and for the delta as a whole (format version 2; see docs/architecture.md).

A model that cannot be parsed, or one with nothing in common, degrades gracefully: with no tensor
matched, the format is a zstd stream of the new file against the old one, about the size of the
full payload. The header carries the format version and the sha256 of base and result, so applying
a delta to the wrong base fails before any work, and a corrupted delta fails on the result hash.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _sparse
from ._frames import U32, Reader, byte_planes, compress, inflate, plane_frames, read_planes
from ._onnxwire import TensorSpan, WireError, initializer_spans
from ._tensor_codes import (
    _QTYPES,
    _STYPES,
    _UINT,
    PRED,
    PRODUCT,
    RAW,
    SAME,
    SUB,
    XOR,
    _Encoder,
    _inverse,
    _predict_quantized,
    _product,
    _words,
)
from .errors import DeltaBaseMismatchError, DeltaError, DeltaFormatError, DeltaResultError

MAGIC = b"OTADLTA1"
# Version 1: dense byte planes only. Version 2 adds the sparse section (entries flagged SPARSE in
# their method byte). A delta with no sparse entry is still written as version 1, byte for byte
# what earlier builds wrote, so agents that read only version 1 keep taking those deltas.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SPARSE = 0x80  # method flag: this entry's words are in the sparse section, not the plane data
_HEADER = struct.Struct(">8sB32s32sII")  # magic, version, base sha, result sha, result length, base length
# The tensor index is stored column by column, each value as the difference from what the base
# predicts (the referenced old tensor's gap and length; the old index equal to the new one), so an
# index of mostly unchanged tensors is mostly zeros and compresses to almost nothing.
_COLUMNS = (("gap", "<i8"), ("length", "<i8"), ("method", "u1"), ("elem", "u1"), ("ref", "<i4"))
# Tensors rebuilt from other tensors (see `_qdq`): one row per PRED or PRODUCT entry, in decoding order.
_DERIVED_COLUMNS = (
    ("entry", "<u4"),
    ("a", "<i4"),
    ("b", "<i4"),
    ("c", "<i4"),
    ("d", "<i4"),
    ("inner", "<u4"),
    ("qtype", "u1"),
    ("stype", "u1"),
)

MAX_RESULT = 1 << 31  # 2 GiB: far above any edge model, and a bound on what a delta may ask for
# Tensors one delta may list: each costs the decoder a few hundred bytes of Python objects, so a
# count bounded only by the result's length (a million empty entries compress to a few KB) would
# cost gigabytes. Real models have hundreds to a few thousand initializers; a model with more is
# diffed as a whole (no tensor matched), as if it could not be parsed.
MAX_TENSORS = 1 << 16


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta's header says, readable without the base."""

    format_version: int
    base_sha256: str
    result_sha256: str
    result_length: int
    base_length: int


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


def _gap(spans: list[TensorSpan], i: int) -> int:
    """Bytes of skeleton before span i (the prediction for a new tensor that references span i)."""
    if not 0 <= i < len(spans):
        return 0
    return spans[i].start - (spans[i - 1].end if i > 0 else 0)


def _columns(rows: Sequence[tuple[int, ...]], spec: tuple[tuple[str, str], ...]) -> bytes:
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(spec)
    return b"".join(np.array(col, dtype=t).tobytes() for col, (_, t) in zip(cols, spec, strict=True))


def _read_columns(raw: bytes, count: int, spec: tuple[tuple[str, str], ...]) -> list[list[int]]:
    if len(raw) != count * sum(np.dtype(t).itemsize for _, t in spec):
        raise DeltaFormatError("delta tensor index is truncated")
    out, pos = [], 0
    for _, t in spec:
        size = count * np.dtype(t).itemsize
        out.append(np.frombuffer(raw[pos : pos + size], dtype=t).tolist())
        pos += size
    return out


def make_delta(old: bytes, new: bytes, *, level: int = 19, data_level: int = 9, sparse: bool = True) -> bytes:
    """Encode `new` relative to `old`; `apply_delta(old, result) == new` byte for byte.

    `sparse=False` keeps every tensor in dense byte planes (format version 1, for comparison).
    """
    if max(len(old), len(new)) > MAX_RESULT:
        raise DeltaError(f"models above {MAX_RESULT} bytes are not delta-encoded; send the full payload")
    old_spans, new_spans = _spans(old), _spans(new)
    if len(new_spans) > MAX_TENSORS:
        new_spans = []
    encoder = _Encoder(old, new, old_spans, new_spans)
    matches = [encoder.match(n) for n in range(len(new_spans))]

    index, derived = [], []
    sparse_words: dict[int, np.ndarray] = {}  # entry → coded words that are cheaper sent sparse
    groups: dict[int, list[tuple[int, np.ndarray]]] = {}  # element width → (entry, coded words)
    prev_end = 0
    for n, (span, m) in enumerate(zip(new_spans, matches, strict=True)):
        gap, prev_end = span.start - prev_end, span.end
        base_len = old_spans[m.ref].length if 0 <= m.ref < len(old_spans) and m.method != PRODUCT else 0
        index.append((gap - _gap(old_spans, m.ref), span.length - base_len, m.method, m.elem, m.ref - n))
        if m.coded is not None:
            groups.setdefault(m.elem, []).append((n, m.coded))
            if sparse and _sparse.choose(m.coded, m.elem, data_level):
                sparse_words[n] = m.coded
        if m.row is not None:
            derived.append((n, *m.row))
    derived.sort(key=lambda row: matches[row[0]].method != PRODUCT)  # products first: PRED may need them

    counts = struct.pack(">II", len(index), len(derived))
    skeleton = compress(_skeleton(new, new_spans), level, _skeleton(old, old_spans) or None)

    def body(chosen: dict[int, np.ndarray]) -> bytes:
        """Index, skeleton and data, with the entries in `chosen` in the sparse section."""
        rows = [(g, ln, m | SPARSE if n in chosen else m, e, r) for n, (g, ln, m, e, r) in enumerate(index)]
        dense = {e: [w for n, w in ws if n not in chosen] for e, ws in groups.items()}
        planes = [p for e in sorted(dense) if dense[e] for p in byte_planes(np.concatenate(dense[e]), e)]
        sections = [compress(_columns(rows, _COLUMNS) + _columns(derived, _DERIVED_COLUMNS), level), skeleton]
        out = counts + b"".join(U32.pack(len(s)) + s for s in sections) + plane_frames(planes, data_level)
        if chosen:
            out += _sparse.section([_sparse.split(chosen[n]) for n in sorted(chosen)], data_level)
        return out

    version, data = 1, body({})
    if sparse_words:  # the per-tensor choice, kept only if the whole delta is smaller for it
        with_sparse = body(sparse_words)
        if len(with_sparse) < len(data):
            version, data = FORMAT_VERSION, with_sparse
    sums = hashlib.sha256(old).digest(), hashlib.sha256(new).digest()
    return _HEADER.pack(MAGIC, version, *sums, len(new), len(old)) + data


def read_delta_header(delta: bytes) -> DeltaInfo:
    """Parse a delta's header; raises :class:`DeltaFormatError` for anything that is not a delta."""
    if len(delta) < _HEADER.size:
        raise DeltaFormatError(f"delta is {len(delta)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, base, result, result_len, base_len = _HEADER.unpack_from(delta)
    if magic != MAGIC:
        raise DeltaFormatError("not a model delta (bad magic number)")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise DeltaFormatError(f"delta format version {version} is not supported (this build reads {readable})")
    if result_len > MAX_RESULT:
        raise DeltaFormatError(f"delta claims a {result_len}-byte result, beyond the {MAX_RESULT}-byte limit")
    return DeltaInfo(version, base.hex(), result.hex(), result_len, base_len)


def apply_delta(old: bytes, delta: bytes) -> bytes:
    """Rebuild the new model from `old` and a delta made by :func:`make_delta`."""
    info = read_delta_header(delta)
    if len(old) != info.base_length or hashlib.sha256(old).hexdigest() != info.base_sha256:
        raise DeltaBaseMismatchError(
            f"delta was made against base sha256 {info.base_sha256[:16]}…, "
            f"not this model ({hashlib.sha256(old).hexdigest()[:16]}…)"
        )
    r = Reader(delta, _HEADER.size)
    count, n_derived = struct.unpack(">II", r.take(8, "the entry counts"))
    if count > min(info.result_length, MAX_TENSORS) or n_derived > count:
        raise DeltaFormatError(f"delta lists an implausible {count} tensors (at most {MAX_TENSORS} are read)")
    index_size = count * sum(np.dtype(t).itemsize for _, t in _COLUMNS)
    derived_size = n_derived * sum(np.dtype(t).itemsize for _, t in _DERIVED_COLUMNS)
    raw_index = inflate(r.frame("the tensor index"), index_size + derived_size, "tensor index")
    columns = _read_columns(raw_index[:index_size], count, _COLUMNS)
    derived = list(zip(*_read_columns(raw_index[index_size:], n_derived, _DERIVED_COLUMNS), strict=True))
    old_spans = _spans(old)
    skeleton = inflate(r.frame("the skeleton"), info.result_length, "skeleton", _skeleton(old, old_spans) or None)

    # Resolve every entry: its old tensor, its skeleton gap and length, its place in the plane data
    # (dense) or in the sparse section.
    entries = []
    words_per_elem: dict[int, int] = {}
    sparse_sizes: list[tuple[int, int]] = []
    derived_entries = {row[0] for row in derived}
    if len(derived_entries) != n_derived or any(n >= count for n in derived_entries):
        raise DeltaFormatError("delta derivation rows name entries twice, or entries it does not have")
    total = 0
    for n, (gap_d, len_d, flagged, elem, rel) in enumerate(zip(*columns, strict=True)):
        ref, method = n + rel, flagged & ~SPARSE
        is_sparse = flagged != method  # a version-2 flag, on anything but SAME
        base = old_spans[ref] if 0 <= ref < len(old_spans) and method != PRODUCT else None
        gap, length = gap_d + _gap(old_spans, ref), len_d + (base.length if base else 0)
        total += max(length, 0)
        bad_flag = is_sparse and (method == SAME or info.format_version < 2)
        if method > PRODUCT or elem not in _UINT or length < 0 or gap < 0 or length % elem or bad_flag:
            raise DeltaFormatError(f"delta tensor entry {n} is invalid (method {flagged}, width {elem})")
        if total > info.result_length:
            raise DeltaFormatError(f"delta tensor entries up to {n} hold more bytes than the result")
        if method in (SAME, SUB, XOR, PRED) and (base is None or base.length != length):
            raise DeltaFormatError(f"delta entry {n} references a tensor the base does not have")
        if (method in (PRED, PRODUCT)) != (n in derived_entries):
            raise DeltaFormatError(f"delta entry {n} lacks its derivation row")
        if is_sparse:
            start = len(sparse_sizes)
            sparse_sizes.append((length // elem, elem))
        else:
            start = words_per_elem.get(elem, 0)
            if method != SAME:
                words_per_elem[elem] = start + length // elem
        entries.append((gap, length, method, elem, base, start, is_sparse))
    streams = read_planes(r, words_per_elem, info.result_length, "tensor data")
    sparse_words = _sparse.read_section(r, sparse_sizes) if sparse_sizes else []
    if r.pos != len(delta):
        raise DeltaFormatError(f"delta has {len(delta) - r.pos} unexpected trailing bytes")

    def coded(n: int) -> np.ndarray:
        _, length, _, elem, _, start, is_sparse = entries[n]
        return sparse_words[start] if is_sparse else streams[elem][start : start + length // elem]

    # Plain entries first; then derived ones in the order listed (each may use those before it).
    pieces: list[bytes | None] = [None] * count
    for n, (_, _, method, elem, base, *_) in enumerate(entries):
        if method == SAME:
            pieces[n] = old[base.start : base.end]  # type: ignore[union-attr]
        elif method == RAW:
            pieces[n] = coded(n).tobytes()
        elif method in (SUB, XOR):
            pieces[n] = _inverse(method, coded(n), _words(old[base.start : base.end], elem), elem).tobytes()  # type: ignore[union-attr]
    for n, a, b, c, d, inner, qtype, stype in derived:
        _, length, method, elem, base, *_ = entries[n]
        try:
            if pieces[n] is not None or not all(
                k < 0 or pieces[k] is not None for k in (a, b) if method == PRODUCT or k == a
            ):
                raise ValueError("derivation depends on a tensor that is not decoded yet")
            if method == PRODUCT:
                reference = _product(pieces[a], pieces[b])
            else:
                if qtype not in _QTYPES or stype not in _STYPES or (b >= 0 and pieces[b] is None):
                    raise ValueError("unknown data types")
                o_scale, o_zp = old_spans[c], old_spans[d] if d >= 0 else None
                reference = _predict_quantized(
                    old[base.start : base.end],
                    qtype,
                    old[o_zp.start : o_zp.end] if o_zp else None,
                    old[o_scale.start : o_scale.end],
                    stype,
                    pieces[b] if b >= 0 else None,
                    pieces[a],
                    inner,
                )
        except (IndexError, ValueError, TypeError) as e:
            raise DeltaFormatError(f"delta entry {n}: bad derivation row ({e})") from e
        if reference.size != length // elem or reference.dtype.itemsize != elem:
            raise DeltaFormatError(f"delta entry {n}: derived values do not fit the tensor")
        pieces[n] = _inverse(SUB, coded(n), reference, elem).tobytes()

    out = bytearray()
    prev = 0
    for (gap, *_), piece in zip(entries, pieces, strict=True):
        if prev + gap > len(skeleton) or piece is None:
            raise DeltaFormatError("delta tensor index is inconsistent")
        out += skeleton[prev : prev + gap]
        out += piece
        prev += gap
    out += skeleton[prev:]

    result = bytes(out)
    if len(result) != info.result_length or hashlib.sha256(result).hexdigest() != info.result_sha256:
        raise DeltaResultError("rebuilt model does not match the sha256 the delta promises: the delta is corrupt")
    return result
