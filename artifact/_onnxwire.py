"""A minimal reader of the protobuf wire format, just enough to find ONNX initializer data.

Deltas must rebuild a model byte for byte. Parsing with `onnx` and serialising again would not
guarantee that (field order, unknown fields, packing all may differ), so the delta code never
re-serialises: it locates the `raw_data` byte ranges of the top-level initializers inside the
original bytes and treats everything else as an opaque "skeleton".

ModelProto.graph = field 7; GraphProto.initializer = field 5; TensorProto: dims = 1,
data_type = 2, name = 8, raw_data = 9, and the packed fixed-width typed fields float_data = 4 and
double_data = 10, whose bytes are laid out exactly like raw_data (little-endian IEEE floats).
Varint-coded fields (int32_data, int64_data …) have no fixed width and stay in the skeleton.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# TensorProto.DataType → bytes per element, for the transforms that work element by element.
ELEMENT_SIZE: dict[int, int] = {
    1: 4,  # FLOAT
    2: 1,  # UINT8
    3: 1,  # INT8
    4: 2,  # UINT16
    5: 2,  # INT16
    6: 4,  # INT32
    7: 8,  # INT64
    9: 1,  # BOOL
    10: 2,  # FLOAT16
    11: 8,  # DOUBLE
    12: 4,  # UINT32
    13: 8,  # UINT64
    16: 2,  # BFLOAT16
}


# Fields holding a tensor's values as fixed-width little-endian bytes → element width (0: by data_type).
_DATA_FIELDS = {9: 0, 4: 4, 10: 8}


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class TensorSpan:
    """A top-level initializer whose values are stored as fixed-width bytes at `buf[start:end]`."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    width: int = 0  # bytes per element as stored; 0: take it from data_type

    @property
    def element_size(self) -> int:
        size = self.width or ELEMENT_SIZE.get(self.data_type, 1)
        return size if self.length % size == 0 else 1


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value start, value end); for varints start is the value."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WireError("length-delimited field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise WireError("fixed-width field runs past its message")
            yield number, wire, pos, pos + size
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire}")


def _tensor(buf: bytes, start: int, end: int) -> TensorSpan | None:
    name: str | None = None
    data_type = 0
    dims: list[int] = []
    raw: list[tuple[int, int, int]] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _VARINT:
            dims.append(a)
        elif number == 1 and wire == _LEN:
            pos = a
            while pos < b:
                d, pos = _varint(buf, pos, b)
                dims.append(d)
        elif number == 2 and wire == _VARINT:
            data_type = a
        elif number == 8 and wire == _LEN:
            try:
                name = bytes(buf[a:b]).decode("utf-8")
            except UnicodeDecodeError:
                return None
        elif wire == _LEN and number in _DATA_FIELDS:
            raw.append((a, b, _DATA_FIELDS[number]))
    if name is None or len(raw) != 1:
        return None  # stays in the skeleton: still rebuilt exactly, just not diffed per tensor
    start, end, width = raw[0]
    return TensorSpan(name, data_type, tuple(dims), start, end, width)


def initializer_spans(buf: bytes) -> list[TensorSpan]:
    """The raw-data initializers of an ONNX model, in file order. Raises :class:`WireError`."""
    spans: list[TensorSpan] = []
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 7 and wire == _LEN:
            for gnum, gwire, ga, gb in _fields(buf, a, b):
                if gnum == 5 and gwire == _LEN:
                    span = _tensor(buf, ga, gb)
                    if span is not None:
                        spans.append(span)
    return spans
