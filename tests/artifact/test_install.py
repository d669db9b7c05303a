"""The install checks: full payload → ONNX, base + delta → ONNX, and the streaming download verifier."""

from __future__ import annotations

import hashlib
import re
import struct
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import artifact as A

from .conftest import tiny_classifier

Build = Callable[..., bytes]


def _parts(data: bytes, trust: A.TrustPolicy) -> tuple[A.VerifiedManifest, bytes]:
    """The manifest through the door's checks 1–5, and the payload, as a device has them before installing."""
    parts = A.read_artifact(data)
    verified = A.verify_manifest(parts.manifest_bytes, parts.signatures, trust=trust, expected_model="shapes")
    return verified, parts.payload


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture()
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of everything hashed with sha256 while the test runs."""
    sizes: list[int] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: bytes | memoryview = b"") -> None:
            self._h = real()
            self.update(data)

        def update(self, data: bytes | memoryview) -> None:
            if len(data):
                sizes.append(len(data))
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

        def digest(self) -> bytes:
            return self._h.digest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    return sizes


# -- full payload → ONNX ----------------------------------------------------------------------------


def test_full_payload_installs_as_the_signed_onnx(
    make_artifact: Build, trust: A.TrustPolicy, onnx_model: bytes
) -> None:
    verified, payload = _parts(make_artifact(), trust)
    assert A.install_full(verified, payload) == onnx_model


@pytest.mark.parametrize("position", [0, 500, -1])
def test_tampered_payload_is_refused_before_decoding(make_artifact: Build, trust: A.TrustPolicy, position: int) -> None:
    verified, payload = _parts(make_artifact(), trust)
    tampered = bytearray(payload)
    tampered[position] ^= 0x01
    with pytest.raises(A.HashMismatchError, match="payload sha256"):
        A.install_full(verified, bytes(tampered))


def test_truncated_payload_is_refused(make_artifact: Build, trust: A.TrustPolicy) -> None:
    verified, payload = _parts(make_artifact(), trust)
    with pytest.raises(A.TruncatedError, match=f"ended after {len(payload) - 1} of {len(payload)} bytes"):
        A.install_full(verified, payload[:-1])


def test_payload_longer_than_signed_is_refused(make_artifact: Build, trust: A.TrustPolicy) -> None:
    verified, payload = _parts(make_artifact(), trust)
    with pytest.raises(A.TooLongError):
        A.install_full(verified, payload + b"\0")


def test_full_install_of_a_streamed_payload_hashes_each_byte_once(
    make_artifact: Build, trust: A.TrustPolicy, onnx_model: bytes, hashed: list[int]
) -> None:
    verified, payload = _parts(make_artifact(), trust)
    stream = A.StreamVerifier.payload(verified)
    for chunk in _chunks(payload, 1000):
        stream.update(chunk)
    received = stream.finish()
    hashed.clear()
    assert A.install_full(verified, received) == onnx_model
    assert sum(hashed) == len(onnx_model)  # the decoded model only: the payload was hashed while it streamed


def test_verified_bytes_of_another_blob_are_not_taken_for_the_payload(
    make_artifact: Build, trust: A.TrustPolicy
) -> None:
    """VerifiedBytes vouch for their own digest only: one that is not the signed payload's is refused."""
    verified, payload = _parts(make_artifact(), trust)
    other = payload[:-1] + bytes([payload[-1] ^ 1])  # same length, another blob (say, a delta's)
    stream = A.StreamVerifier(len(other), hashlib.sha256(other).hexdigest(), "delta")
    stream.update(other)
    with pytest.raises(A.HashMismatchError, match=f"payload sha256 is {stream.sha256}"):
        A.install_full(verified, stream.finish())
    short = A.StreamVerifier(len(payload) - 1, hashlib.sha256(payload[:-1]).hexdigest(), "delta")
    short.update(payload[:-1])
    with pytest.raises(A.TruncatedError):
        A.install_full(verified, short.finish())


# -- base ONNX + delta → ONNX -----------------------------------------------------------------------


def test_delta_installs_as_the_signed_onnx(make_artifact: Build, trust: A.TrustPolicy) -> None:
    base, new = tiny_classifier(1), tiny_classifier(2)
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    assert A.install_delta(verified, base, A.make_delta(base, new)) == new


def test_delta_install_hashes_base_and_result_once(
    make_artifact: Build, trust: A.TrustPolicy, hashed: list[int]
) -> None:
    base, new = tiny_classifier(1), tiny_classifier(2)
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    delta = A.make_delta(base, new)
    hashed.clear()
    A.install_delta(verified, base, delta)
    assert sorted(hashed) == sorted([len(base), len(new)])


def test_delta_for_another_base_is_refused(make_artifact: Build, trust: A.TrustPolicy) -> None:
    base, new = tiny_classifier(1), tiny_classifier(2)
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    with pytest.raises(A.DeltaBaseMismatchError):
        A.install_delta(verified, tiny_classifier(3), A.make_delta(base, new))


def test_delta_rebuilding_another_model_than_the_signed_one_is_refused(
    make_artifact: Build, trust: A.TrustPolicy
) -> None:
    """An honest delta for the wrong target (say v4 offered with v3's manifest) must not install."""
    base, new, other = tiny_classifier(1), tiny_classifier(2), tiny_classifier(4)
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    with pytest.raises(A.HashMismatchError, match="rebuilt ONNX model sha256"):
        A.install_delta(verified, base, A.make_delta(base, other))


def test_delta_rebuilding_a_model_of_another_length_is_refused(make_artifact: Build, trust: A.TrustPolicy) -> None:
    base, new = tiny_classifier(1), tiny_classifier(2)
    longer = onnx.load_model_from_string(new)
    longer.doc_string = "a few more bytes"
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    with pytest.raises(A.TooLongError):
        A.install_delta(verified, base, A.make_delta(base, longer.SerializeToString()))


def test_corrupt_delta_is_refused(make_artifact: Build, trust: A.TrustPolicy) -> None:
    base, new = tiny_classifier(1), tiny_classifier(2)
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    delta = bytearray(A.make_delta(base, new))
    delta[-5] ^= 0xFF
    with pytest.raises(A.DeltaError):
        A.install_delta(verified, base, bytes(delta))


def test_delta_promising_a_huge_result_is_refused_before_anything_is_inflated(
    make_artifact: Build, trust: A.TrustPolicy
) -> None:
    """A delta is unsigned: one whose header promises 32 MiB of zeros (a few KB compressed) for a
    small signed model is refused on the signed length, without inflating (or hashing) those zeros."""
    from artifact import delta as D
    from artifact._frames import U32, compress

    base, new = tiny_classifier(1), tiny_classifier(2)
    verified, _ = _parts(make_artifact(onnx_bytes=new), trust)
    zeros = bytes(32 << 20)
    frames = [compress(b"", 1), compress(zeros, 1)]  # an empty tensor index; the whole result as skeleton
    body = struct.pack(">II", 0, 0) + b"".join(U32.pack(len(f)) + f for f in frames) + b"\x01"  # no plane data
    sums = hashlib.sha256(base).digest(), hashlib.sha256(zeros).digest()
    delta = D._HEADER.pack(D.MAGIC, 1, *sums, len(zeros), len(base)) + body
    assert len(delta) < 64 * 1024 and A.apply_delta(base, delta) == zeros  # well-formed: it does rebuild them
    del zeros

    tracemalloc.start()
    try:
        with pytest.raises(A.TooLongError, match="longer than the signed"):
            A.install_delta(verified, base, delta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"refusing the delta allocated {peak} bytes"


# -- ONNX kept on disk ------------------------------------------------------------------------------


def test_stored_onnx_is_checked_against_the_signed_digest(
    make_artifact: Build, trust: A.TrustPolicy, onnx_model: bytes
) -> None:
    verified, _ = _parts(make_artifact(), trust)
    assert A.verify_onnx(verified, onnx_model) == onnx_model
    with pytest.raises(A.HashMismatchError, match="slot a ONNX model"):
        A.verify_onnx(verified, onnx_model[:-1] + b"\0", what="slot a ONNX model")
    with pytest.raises(A.TruncatedError):
        A.verify_onnx(verified, onnx_model[:-1])


# -- the streaming verifier -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_stream_verifier_accepts_the_blob_in_any_chunking(
    make_artifact: Build, trust: A.TrustPolicy, size: int
) -> None:
    verified, payload = _parts(make_artifact(), trust)
    stream = A.StreamVerifier.payload(verified)
    for chunk in _chunks(payload, size):
        stream.update(memoryview(chunk))
    assert stream.remaining == 0
    got = stream.finish()
    assert (got.data, got.sha256, got.length) == (payload, verified.manifest.payload.sha256, len(payload))


def test_stream_verifier_refuses_the_chunk_that_crosses_the_signed_length() -> None:
    blob = bytes(range(256)) * 10
    stream = A.StreamVerifier(len(blob), hashlib.sha256(blob).hexdigest(), "payload")
    stream.update(blob[:2000])
    with pytest.raises(A.TooLongError, match="longer than the signed 2560 bytes"):
        stream.update(blob[2000:] + b"x")
    assert stream.received == 2000  # the refused chunk was not taken in
    stream.update(blob[2000:])
    assert stream.finish().data == blob


def test_stream_verifier_refuses_a_short_or_altered_stream() -> None:
    blob = b"model bytes" * 100
    sha = hashlib.sha256(blob).hexdigest()
    short = A.StreamVerifier(len(blob), sha, "payload")
    short.update(blob[:-1])
    with pytest.raises(A.TruncatedError):
        short.finish()
    altered = A.StreamVerifier(len(blob), sha, "payload")
    for chunk in _chunks(blob[:-1] + b"!", 64):
        altered.update(chunk)
    with pytest.raises(A.HashMismatchError):
        altered.finish()


def test_resumed_download_rehashes_the_partial_once_and_gives_the_same_bytes() -> None:
    blob = bytes(range(256)) * 40
    sha = hashlib.sha256(blob).hexdigest()
    partial = blob[:3333]  # what a crash left on disk
    stream = A.StreamVerifier(len(blob), sha, "payload")
    for chunk in _chunks(partial, 1000):  # the partial file, read back
        stream.update(chunk)
    assert (stream.received, stream.remaining) == (3333, len(blob) - 3333)
    for chunk in _chunks(blob[3333:], 4096):  # the rest, from a ranged request
        stream.update(chunk)
    assert stream.finish().data == blob


def test_restarted_verifier_starts_from_byte_zero() -> None:
    blob = b"abc" * 1000
    stream = A.StreamVerifier(len(blob), hashlib.sha256(blob).hexdigest(), "delta from v2")
    stream.update(b"garbage")
    fresh = stream.restarted()
    assert (fresh.received, fresh.length, fresh.sha256, fresh.what) == (0, len(blob), stream.sha256, "delta from v2")
    fresh.update(blob)
    assert fresh.finish().data == blob


# -- shared patterns and the ONNX graph's edges -----------------------------------------------------


def test_graph_io_reads_what_a_caller_feeds_and_gets() -> None:
    io = A.read_graph_io(onnx.load_model_from_string(tiny_classifier()))
    assert io.opset == 17
    assert [(i.name, i.shape, i.dtype) for i in io.inputs] == [("input", ["batch", 3, 8, 8], "float32")]
    assert [(o.name, o.shape) for o in io.outputs] == [("logits", ["batch", 3])]


def test_graph_io_leaves_out_initializers_listed_as_inputs_and_marks_unset_dims() -> None:
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    unset = helper.make_tensor_value_info("x", TensorProto.UINT8, None)
    unset.type.tensor_type.shape.dim.add()  # a dimension with neither a size nor a name
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [unset, helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [4])],
        initializer=[w],
    )
    io = A.read_graph_io(helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx", 13)]))
    assert io.opset == 13
    assert [(i.name, i.shape, i.dtype) for i in io.inputs] == [("x", [None], "uint8")]


def _accepted(make_artifact: Build, **changes: object) -> bool:
    """Whether a manifest with `changes` applied passes the manifest's own validation."""
    fields = A.parse_manifest(A.read_artifact(make_artifact()).manifest_bytes).model_dump(by_alias=True)
    try:
        A.build_manifest(**{**fields, **changes})
    except A.ManifestError:
        return False
    return True


@pytest.mark.parametrize("name", ["shapes", "a.b-c_1", "9x", "Shapes", "-x", "x" * 64, "x" * 65, "a b"])
def test_model_name_pattern_is_the_one_manifests_enforce(make_artifact: Build, name: str) -> None:
    assert _accepted(make_artifact, model=name) == bool(re.match(A.MODEL_NAME_PATTERN, name))


@pytest.mark.parametrize("digest", ["0" * 64, "ab" * 32, "AB" * 32, "0" * 63, "g" * 64, "0" * 65])
def test_sha256_pattern_is_the_one_manifests_enforce(make_artifact: Build, digest: str) -> None:
    payload = {"encoding": "onnx+zstd", "length": 10, "sha256": digest}
    assert _accepted(make_artifact, payload=payload) == bool(re.match(A.SHA256_HEX_PATTERN, digest))
