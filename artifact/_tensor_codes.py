"""Per-tensor codes for model deltas: transforms, predictions, and the choice between them.

`artifact.delta` owns the format; this module owns how one new tensor is expressed relative to the
base (SAME, SUB, XOR, PRED, PRODUCT or RAW, see docs/architecture.md) and the arithmetic both the
encoder and the decoder must run identically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ._onnxwire import TensorSpan
from ._qdq import quant_relations, scale_products

SAME, RAW, SUB, XOR, PRED, PRODUCT = 0, 1, 2, 3, 4, 5
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_QTYPES = {2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32}  # quantized data types
_STYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # scale data types


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
