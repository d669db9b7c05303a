"""Length-prefixed zstd frames and byte planes: the containers every section of a delta is made of.

Frames are zstd, magicless, without checksums (the delta header's result sha256 covers everything)
and each is prefixed with its u32 length. Decoding is bounded by the size the caller expects, and
every failure is a :class:`DeltaFormatError`.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from ._tensor_codes import _UINT
from .codec import inflate_bounded
from .errors import DeltaFormatError, PayloadError

U32 = struct.Struct(">I")
_SINGLE_FRAME, _PLANE_FRAMES = 0, 1


def compress(data: bytes, level: int, dict_data: bytes | None = None) -> bytes:
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


def inflate(frame: bytes, limit: int, what: str, dict_data: bytes | None = None) -> bytes:
    try:
        return inflate_bounded(frame, limit, what=what, dict_data=dict_data, magicless=True)
    except PayloadError as e:
        raise DeltaFormatError(f"delta {what} is corrupt: {e}") from e


class Reader:
    """Reads a delta front to back; every read past the end is a :class:`DeltaFormatError`."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DeltaFormatError(f"delta is truncated in {what}")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def frame(self, what: str) -> bytes:
        (length,) = U32.unpack(self.take(4, what))
        return self.take(length, what)


def byte_planes(words: np.ndarray, elem: int) -> list[bytes]:
    """All low bytes together, then all next bytes … (little-endian words of width `elem`)."""
    grid = words.view(np.uint8).reshape(-1, elem)
    return [np.ascontiguousarray(grid[:, p]).tobytes() for p in range(elem)]


def plane_frames(planes: list[bytes], level: int) -> bytes:
    """Each byte plane in its own frame (own entropy tables), or all in one: whichever is smaller."""
    separate = b"".join(U32.pack(len(f)) + f for f in (compress(p, level) for p in planes))
    single = compress(b"".join(planes), level)
    if len(single) + 4 <= len(separate):
        return bytes([_SINGLE_FRAME]) + U32.pack(len(single)) + single
    return bytes([_PLANE_FRAMES]) + separate


def read_planes(r: Reader, words_per_elem: dict[int, int], limit: int, what: str) -> dict[int, np.ndarray]:
    """Plane data written by :func:`plane_frames` back into one word stream per element width."""
    sizes = [words_per_elem[e] for e in sorted(words_per_elem) for _ in range(e)]
    if sum(sizes) > limit:
        raise DeltaFormatError(f"delta tensor index claims more {what} than the result holds")
    (layout,) = r.take(1, f"the {what} layout")
    if layout == _SINGLE_FRAME:
        data = inflate(r.frame(what), sum(sizes), what)
        planes, pos = [], 0
        for size in sizes:
            planes.append(data[pos : pos + size])
            pos += size
    elif layout == _PLANE_FRAMES:
        planes = [inflate(r.frame(f"a byte plane of the {what}"), size, f"{what} byte plane") for size in sizes]
    else:
        raise DeltaFormatError(f"delta {what} layout {layout} is unknown")
    if [len(p) for p in planes] != sizes:
        raise DeltaFormatError(f"delta {what} is shorter than its index says")
    streams, k = {}, 0
    for elem in sorted(words_per_elem):
        block = np.frombuffer(b"".join(planes[k : k + elem]), dtype=np.uint8).reshape(elem, -1)
        streams[elem] = np.ascontiguousarray(block.T).reshape(-1).view(np.dtype(_UINT[elem]).newbyteorder("<"))
        k += elem
    return streams
