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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from ._onnxwire import TensorSpan, WireError, initializer_spans
from ._qdq import quant_relations, scale_products
from .codec import inflate_bounded
from .errors import DeltaBaseMismatchError, DeltaError, DeltaFormatError, DeltaResultError, PayloadError

MAGIC = b"OTADLTA1"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sB32s32sII")  # magic, version, base sha, result sha, result length, base length
_U32 = struct.Struct(">I")
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
_SINGLE_FRAME, _PLANE_FRAMES = 0, 1

SAME, RAW, SUB, XOR, PRED, PRODUCT = 0, 1, 2, 3, 4, 5
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_QTYPES = {2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32}  # quantized data types
_STYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # scale data types
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


def _forward(method: int, new: np.ndarray, old: np.ndarray, elem: int) -> np.ndarray:
    """Transform new words against reference words; the result is unsigned words of width `elem`."""
    if method == XOR:
        out: np.ndarray = new ^ old
        return out
    diff = (new - old).view(_SIGNED[elem])  # wraps modulo 2^(8·elem)
    zigzag: np.ndarray = ((diff << 1) ^ (diff >> (elem * 8 - 1))).view(_UINT[elem])  # small |d| → small code
    return zigzag


def _inverse(method: int, coded: np.ndarray, old: np.ndarray, elem: int) -> np.ndarray:
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
        level,
        source_size=len(data),
        write_checksum=False,  # the result's sha256 in the header covers everything
        write_content_size=False,
        write_dict_id=False,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
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


def _gap(spans: list[TensorSpan], i: int) -> int:
    """Bytes of skeleton before span i (the prediction for a new tensor that references span i)."""
    if not 0 <= i < len(spans):
        return 0
    return spans[i].start - (spans[i - 1].end if i > 0 else 0)


def _predict_quantized(
    q_old: bytes,
    qtype: int,
    zp_old: bytes | None,
    s_old: bytes,
    stype: int,
    zp_new: bytes | None,
    s_new: bytes,
    inner: int,
) -> np.ndarray:
    """round((q_old - zp_old) · s_old / s_new) + zp_new per channel, as unsigned words.

    Encoder and decoder run exactly these float64 operations, so both get the same integers.
    """
    qdt, sdt = np.dtype(_QTYPES[qtype]).newbyteorder("<"), np.dtype(_STYPES[stype]).newbyteorder("<")
    q = np.frombuffer(q_old, qdt).astype(np.float64)
    so, sn = np.frombuffer(s_old, sdt).astype(np.float64), np.frombuffer(s_new, sdt).astype(np.float64)
    zo = np.frombuffer(zp_old, qdt).astype(np.float64) if zp_old is not None else np.zeros(1)
    zn = np.frombuffer(zp_new, qdt).astype(np.float64) if zp_new is not None else np.zeros(1)
    channels = so.size
    if channels == 0 or sn.size != channels or zo.size not in (1, channels) or zn.size not in (1, channels):
        raise ValueError("scale and zero point sizes do not match")
    if not (np.all(np.isfinite(so)) and np.all(np.isfinite(sn)) and np.all(sn != 0)):
        raise ValueError("scales are not finite and non-zero")
    ch = (np.arange(q.size) // max(inner, 1)) % channels
    zo_c, zn_c = (zo if zo.size == 1 else zo[ch]), (zn if zn.size == 1 else zn[ch])
    with np.errstate(all="ignore"):
        pred = np.rint((q - zo_c) * (so / sn)[ch]) + zn_c
    info = np.iinfo(qdt)  # type: ignore[type-var]
    pred = np.clip(np.nan_to_num(pred), info.min, info.max).astype(qdt)
    return pred.view(_UINT[qdt.itemsize])


@dataclass
class _Match:
    """How one new tensor is encoded."""

    method: int
    elem: int
    ref: int
    coded: np.ndarray | None = None
    row: tuple[int, ...] | None = None  # derived row (PRED, PRODUCT) without the leading entry index


def _product(a: bytes, b: bytes) -> np.ndarray:
    """float32 a · b (a scalar or per channel), as uint32 words; exact IEEE rounding on every platform."""
    fa, fb = np.frombuffer(a, "<f4"), np.frombuffer(b, "<f4")
    if fa.size not in (1, fb.size) and fb.size != 1:
        raise ValueError("factor sizes do not broadcast")
    with np.errstate(all="ignore"):
        out: np.ndarray = (fa * fb).astype("<f4").view("<u4")
    return out


class _Encoder:
    """Chooses, per new tensor, the cheapest way to send it relative to the base."""

    def __init__(self, old: bytes, new: bytes, old_spans: list[TensorSpan], new_spans: list[TensorSpan]) -> None:
        self.old, self.new = old, new
        self.old_spans, self.new_spans = old_spans, new_spans
        self.old_index = {s.name: i for i, s in enumerate(old_spans)}
        self.new_index = {s.name: i for i, s in enumerate(new_spans)}
        self.old_hashes = [hashlib.sha256(old[s.start : s.end]).digest() for s in old_spans]
        self.by_content: dict[bytes, int] = {}
        for i, h in enumerate(self.old_hashes):
            self.by_content.setdefault(h, i)
        has_tensors = bool(new_spans and old_spans)
        self.rel_old = quant_relations(old) if has_tensors else {}
        self.rel_new = quant_relations(new) if has_tensors else {}
        self.products = scale_products(new) if new_spans else {}

    def _old(self, i: int) -> bytes:
        s = self.old_spans[i]
        return self.old[s.start : s.end]

    def _new(self, i: int) -> bytes:
        s = self.new_spans[i]
        return self.new[s.start : s.end]

    def _predicted(self, n: int, i: int) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """A quantized tensor re-quantized from its old values with the new scale (PRED)."""
        span, name = self.new_spans[n], self.new_spans[n].name
        ro, rn = self.rel_old.get(name), self.rel_new.get(name)
        if not (ro and rn and ro.axis == rn.axis and span.data_type in _QTYPES and span.dims == self.old_spans[i].dims):
            return None
        so, sn = self.old_index.get(ro.scale, -1), self.new_index.get(rn.scale, -1)
        if so < 0 or sn < 0:
            return None  # scale not stored as a plain tensor
        # A zero point stored in varint form is taken as 0 (symmetric weights): a prediction only
        # has to be good, not right — the coded difference makes the result exact either way.
        zo = self.old_index.get(ro.zero_point, -1) if ro.zero_point else -1
        zn = self.new_index.get(rn.zero_point, -1) if rn.zero_point else -1
        scale = self.new_spans[sn]
        axis = rn.axis + len(span.dims) if rn.axis < 0 else rn.axis
        per_channel = scale.length > scale.element_size and 0 <= axis < len(span.dims)
        inner = int(np.prod(span.dims[axis + 1 :])) if per_channel else 1
        row = (sn, zn, so, zo, inner, span.data_type, scale.data_type)
        try:
            words = _predict_quantized(
                self._old(i),
                span.data_type,
                self._old(zo) if zo >= 0 else None,
                self._old(so),
                scale.data_type,
                self._new(zn) if zn >= 0 else None,
                self._new(sn),
                inner,
            )
        except (KeyError, ValueError):
            return None
        return words, row

    def _product_of_scales(self, n: int) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """A bias scale rebuilt as input scale · weight scale (PRODUCT)."""
        pair = self.products.get(self.new_spans[n].name)
        if pair is None or self.new_spans[n].data_type != 1:
            return None
        a, b = self.new_index.get(pair[0], -1), self.new_index.get(pair[1], -1)
        if a < 0 or b < 0 or any(self.new_spans[k].data_type != 1 for k in (a, b)):
            return None
        try:
            words = _product(self._new(a), self._new(b))
        except ValueError:
            return None
        if words.nbytes != self.new_spans[n].length:
            return None
        return words, (a, b, -1, -1, 0, 0, 1)

    def match(self, n: int) -> _Match:
        span = self.new_spans[n]
        digest = hashlib.sha256(self._new(n)).digest()
        i = self.old_index.get(span.name, -1)
        if i >= 0 and self.old_hashes[i] == digest:
            return _Match(SAME, 1, i)
        if i < 0 and digest in self.by_content:
            return _Match(SAME, 1, self.by_content[digest])
        elem = span.element_size
        new_words = _words(self._new(n), elem)
        best, best_size = _Match(RAW, elem, n, new_words), _plane_entropy(new_words, elem)
        candidates: list[tuple[int, np.ndarray, tuple[int, ...] | None]] = []
        if i >= 0 and self.old_spans[i].length == span.length:
            old_words = _words(self._old(i), elem)
            candidates += [(SUB, old_words, None), (XOR, old_words, None)]
            predicted = self._predicted(n, i)
            if predicted is not None:
                candidates.append((PRED, *predicted))
        product = self._product_of_scales(n) if elem == 4 else None
        if product is not None:
            candidates.append((PRODUCT, *product))
        for method, reference, row in candidates:
            trial = _forward(XOR if method == XOR else SUB, new_words, reference, elem)
            size = _plane_entropy(trial, elem)
            if size < best_size:
                ref = n if method == PRODUCT or i < 0 else i
                best, best_size = _Match(method, elem, ref, trial, row), size
        return best


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


def _plane_frames(planes: list[bytes], level: int) -> bytes:
    """Each byte plane in its own frame (own entropy tables), or all in one: whichever is smaller."""
    separate = b"".join(_U32.pack(len(f)) + f for f in (_compress(p, level) for p in planes))
    single = _compress(b"".join(planes), level)
    if len(single) + 4 <= len(separate):
        return bytes([_SINGLE_FRAME]) + _U32.pack(len(single)) + single
    return bytes([_PLANE_FRAMES]) + separate


def make_delta(old: bytes, new: bytes, *, level: int = 19, data_level: int = 9) -> bytes:
    """Encode `new` relative to `old`; `apply_delta(old, result) == new` byte for byte."""
    if max(len(old), len(new)) > MAX_RESULT:
        raise DeltaError(f"models above {MAX_RESULT} bytes are not delta-encoded; send the full payload")
    old_spans, new_spans = _spans(old), _spans(new)
    encoder = _Encoder(old, new, old_spans, new_spans)
    matches = [encoder.match(n) for n in range(len(new_spans))]

    index, derived = [], []
    groups: dict[int, list[np.ndarray]] = {}
    prev_end = 0
    for n, (span, m) in enumerate(zip(new_spans, matches, strict=True)):
        gap, prev_end = span.start - prev_end, span.end
        base_len = old_spans[m.ref].length if 0 <= m.ref < len(old_spans) and m.method != PRODUCT else 0
        index.append((gap - _gap(old_spans, m.ref), span.length - base_len, m.method, m.elem, m.ref - n))
        if m.coded is not None:
            groups.setdefault(m.elem, []).append(m.coded)
        if m.row is not None:
            derived.append((n, *m.row))
    derived.sort(key=lambda row: matches[row[0]].method != PRODUCT)  # products first: PRED may need them

    planes = [
        np.ascontiguousarray(words.view(np.uint8).reshape(-1, elem).T[p]).tobytes()
        for elem in sorted(groups)
        for words in [np.concatenate(groups[elem])]
        for p in range(elem)
    ]
    sections = [
        _compress(_columns(index, _COLUMNS) + _columns(derived, _DERIVED_COLUMNS), level),
        _compress(_skeleton(new, new_spans), level, _skeleton(old, old_spans) or None),
    ]
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, hashlib.sha256(old).digest(), hashlib.sha256(new).digest(), len(new), len(old)
    )
    counts = struct.pack(">II", len(index), len(derived))
    return header + counts + b"".join(_U32.pack(len(s)) + s for s in sections) + _plane_frames(planes, data_level)


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

    def frame(self, what: str) -> bytes:
        (length,) = _U32.unpack(self.take(4, what))
        return self.take(length, what)


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
        return inflate_bounded(frame, limit, what=what, dict_data=dict_data, magicless=True)
    except PayloadError as e:
        raise DeltaFormatError(f"delta {what} is corrupt: {e}") from e


def _read_planes(r: _Reader, words_per_elem: dict[int, int], limit: int) -> dict[int, np.ndarray]:
    """The plane data back into one word stream per element width."""
    sizes = [words_per_elem[e] for e in sorted(words_per_elem) for _ in range(e)]
    if sum(n * 1 for n in sizes) > limit:
        raise DeltaFormatError("delta tensor index claims more data than the result holds")
    (layout,) = r.take(1, "the data layout")
    if layout == _SINGLE_FRAME:
        data = _inflate(r.frame("the tensor data"), sum(sizes), "tensor data")
        planes, pos = [], 0
        for size in sizes:
            planes.append(data[pos : pos + size])
            pos += size
    elif layout == _PLANE_FRAMES:
        planes = [_inflate(r.frame("a byte plane"), size, "byte plane") for size in sizes]
    else:
        raise DeltaFormatError(f"delta data layout {layout} is unknown")
    if [len(p) for p in planes] != sizes:
        raise DeltaFormatError("delta tensor data is shorter than its index says")
    streams, k = {}, 0
    for elem in sorted(words_per_elem):
        block = np.frombuffer(b"".join(planes[k : k + elem]), dtype=np.uint8).reshape(elem, -1)
        streams[elem] = np.ascontiguousarray(block.T).reshape(-1).view(np.dtype(_UINT[elem]).newbyteorder("<"))
        k += elem
    return streams


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
    count, n_derived = struct.unpack(">II", r.take(8, "the entry counts"))
    if count > info.result_length or n_derived > count:
        raise DeltaFormatError(f"delta lists an implausible {count} tensors")
    index_size = count * sum(np.dtype(t).itemsize for _, t in _COLUMNS)
    derived_size = n_derived * sum(np.dtype(t).itemsize for _, t in _DERIVED_COLUMNS)
    raw_index = _inflate(r.frame("the tensor index"), index_size + derived_size, "tensor index")
    columns = _read_columns(raw_index[:index_size], count, _COLUMNS)
    derived = list(zip(*_read_columns(raw_index[index_size:], n_derived, _DERIVED_COLUMNS), strict=True))
    old_spans = _spans(old)
    skeleton = _inflate(r.frame("the skeleton"), info.result_length, "skeleton", _skeleton(old, old_spans) or None)

    # Resolve every entry: its old tensor, its skeleton gap and length, its place in the plane data.
    entries = []
    words_per_elem: dict[int, int] = {}
    derived_entries = {row[0] for row in derived}
    for n, (gap_d, len_d, method, elem, rel) in enumerate(zip(*columns, strict=True)):
        ref = n + rel
        base = old_spans[ref] if 0 <= ref < len(old_spans) and method != PRODUCT else None
        gap, length = gap_d + _gap(old_spans, ref), len_d + (base.length if base else 0)
        if method > PRODUCT or elem not in _UINT or length < 0 or gap < 0 or length % elem:
            raise DeltaFormatError(f"delta tensor entry {n} is invalid (method {method}, width {elem})")
        if method in (SAME, SUB, XOR, PRED) and (base is None or base.length != length):
            raise DeltaFormatError(f"delta entry {n} references a tensor the base does not have")
        if (method in (PRED, PRODUCT)) != (n in derived_entries):
            raise DeltaFormatError(f"delta entry {n} lacks its derivation row")
        start = words_per_elem.get(elem, 0)
        if method != SAME:
            words_per_elem[elem] = start + length // elem
        entries.append((gap, length, method, elem, base, start))
    streams = _read_planes(r, words_per_elem, info.result_length)
    if r.pos != len(delta):
        raise DeltaFormatError(f"delta has {len(delta) - r.pos} unexpected trailing bytes")

    def coded(n: int) -> np.ndarray:
        _, length, _, elem, _, start = entries[n]
        return streams[elem][start : start + length // elem]

    # Plain entries first; then derived ones in the order listed (each may use those before it).
    pieces: list[bytes | None] = [None] * count
    for n, (_, _, method, elem, base, _) in enumerate(entries):
        if method == SAME:
            pieces[n] = old[base.start : base.end]  # type: ignore[union-attr]
        elif method == RAW:
            pieces[n] = coded(n).tobytes()
        elif method in (SUB, XOR):
            pieces[n] = _inverse(method, coded(n), _words(old[base.start : base.end], elem), elem).tobytes()  # type: ignore[union-attr]
    for n, a, b, c, d, inner, qtype, stype in derived:
        _, length, method, elem, base, _ = entries[n]
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
