"""Payload codec and artifact file: round trips, and typed errors for truncated or garbled input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import zstandard

import artifact as A


def test_payload_round_trip(onnx_model: bytes) -> None:
    payload = A.encode_payload(onnx_model)
    assert A.decode_payload(payload, encoding="onnx+zstd", max_length=len(onnx_model)) == onnx_model


def test_decode_is_bounded_while_decoding() -> None:
    """No declared size in the frame: the bound must stop the inflating stream itself."""
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (32 << 20))
    with pytest.raises(A.DecompressionBombError):
        A.decode_payload(bomb, encoding="onnx+zstd", max_length=1000)


def test_declared_size_checked_before_decoding() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 5000)
    with pytest.raises(A.DecompressionBombError, match="declares 5000"):
        A.decode_payload(frame, encoding="onnx+zstd", max_length=4999)


def test_payload_errors() -> None:
    with pytest.raises(A.UnsupportedEncodingError):
        A.decode_payload(b"", encoding="onnx+gzip", max_length=10)
    with pytest.raises(A.PayloadError, match="not a zstd frame"):
        A.decode_payload(b"garbage!", encoding="onnx+zstd", max_length=10)


def test_artifact_file_round_trip(make_artifact: Callable[..., bytes]) -> None:
    data = make_artifact()
    parts = A.read_artifact(data)
    assert A.artifact_bytes(parts.manifest_bytes, parts.signatures, parts.payload) == data
    assert A.parse_manifest(parts.manifest_bytes).model == "shapes"


@pytest.mark.parametrize(
    ("cut", "part"),
    [(4, "magic"), (10, "manifest length"), (100, "the manifest"), (-3, "the payload")],
)
def test_truncated_artifact_names_the_part(make_artifact: Callable[..., bytes], cut: int, part: str) -> None:
    data = make_artifact()
    with pytest.raises(A.ArtifactFormatError, match=part):
        A.read_artifact(data[:cut])


def test_garbled_artifacts(make_artifact: Callable[..., bytes]) -> None:
    data = make_artifact()
    with pytest.raises(A.ArtifactFormatError, match="not an OTA model artifact"):
        A.read_artifact(b"PK\x03\x04" + data[4:])
    with pytest.raises(A.ArtifactFormatError, match="after the payload"):
        A.read_artifact(data + b"x")
    mlen = int.from_bytes(data[8:12], "big")
    sig_at = 12 + mlen
    garbled = data[: sig_at + 4] + b"{" + data[sig_at + 5 :]
    with pytest.raises(A.ArtifactFormatError, match="signature block"):
        A.read_artifact(garbled)
    huge = data[:8] + (10**6).to_bytes(4, "big") + data[12:]
    with pytest.raises(A.ArtifactFormatError, match="exceeds"):
        A.read_artifact(huge)


def test_head_of_a_file_is_read_without_its_payload(make_artifact: Callable[..., bytes]) -> None:
    import io

    data = make_artifact()
    parts = A.read_artifact(data)
    stream = io.BytesIO(data)
    head = A.read_artifact_head(stream, len(data))
    assert (head.manifest_bytes, head.signatures) == (parts.manifest_bytes, parts.signatures)
    assert head.payload_length == len(parts.payload) and stream.tell() == head.payload_offset
    assert data[head.payload_offset :] == parts.payload


@pytest.mark.parametrize(("cut", "message"), [(-1, "truncated"), (1, "unexpected bytes"), (-(10**6), "truncated")])
def test_head_refuses_a_file_whose_payload_does_not_fill_it(
    make_artifact: Callable[..., bytes], cut: int, message: str
) -> None:
    import io

    data = make_artifact()
    data = data[:cut] if cut < 0 else data + b"\0" * cut
    with pytest.raises(A.ArtifactFormatError, match=message):
        A.read_artifact_head(io.BytesIO(data), len(data))
