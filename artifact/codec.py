"""Payload codec: ONNX bytes ↔ the bytes sent over the wire.

`onnx+zstd` is one zstd frame (level 19, long-distance matching, content size and checksum in the
frame). Decoding is bounded: it reads the output in slices and stops as soon as it would pass the
signed ONNX length, so a payload crafted to inflate to gigabytes costs at most that length.
"""

from __future__ import annotations

import zstandard

from .errors import DecompressionBombError, PayloadError, UnsupportedEncodingError

ENCODING_ONNX_ZSTD = "onnx+zstd"
ENCODINGS = (ENCODING_ONNX_ZSTD,)
_SLICE = 1 << 20
# The window a decoder accepts: 2^27 = 128 MiB covers any model a device can hold, and bounds the
# memory a hostile frame header can ask for.
_MAX_WINDOW = 1 << 27


def encode_payload(onnx_bytes: bytes, *, encoding: str = ENCODING_ONNX_ZSTD, level: int = 19) -> bytes:
    if encoding != ENCODING_ONNX_ZSTD:
        raise UnsupportedEncodingError(f"unknown payload encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(onnx_bytes), enable_ldm=True, write_checksum=True, write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(onnx_bytes)


def decode_payload(payload: bytes, *, encoding: str, max_length: int) -> bytes:
    """Decode a payload, refusing to produce more than `max_length` bytes."""
    if encoding != ENCODING_ONNX_ZSTD:
        raise UnsupportedEncodingError(f"unknown payload encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise PayloadError(f"payload is not a zstd frame: {e}") from e
    if declared > max_length:
        raise DecompressionBombError(f"payload declares {declared} decoded bytes; the manifest allows {max_length}")
    return inflate_bounded(payload, max_length, what="payload")


def inflate_bounded(
    frame: bytes, max_length: int, *, what: str, dict_data: bytes | None = None, magicless: bool = False
) -> bytes:
    """Decompress one zstd frame, stopping with :class:`DecompressionBombError` past `max_length`.

    `magicless` frames omit zstd's 4-byte magic number (deltas, where every byte counts).
    """
    zdict = zstandard.ZstdCompressionDict(dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if dict_data else None
    fmt = zstandard.FORMAT_ZSTD1_MAGICLESS if magicless else zstandard.FORMAT_ZSTD1
    dctx = zstandard.ZstdDecompressor(dict_data=zdict, max_window_size=_MAX_WINDOW, format=fmt)
    out = bytearray()
    try:
        with dctx.stream_reader(frame, read_across_frames=False) as reader:
            while True:
                chunk = reader.read(min(_SLICE, max_length - len(out) + 1))
                if not chunk:
                    break
                out += chunk
                if len(out) > max_length:
                    raise DecompressionBombError(f"{what} inflates beyond the allowed {max_length} bytes")
    except zstandard.ZstdError as e:
        raise PayloadError(f"{what} is not a valid zstd frame: {e}") from e
    return bytes(out)
