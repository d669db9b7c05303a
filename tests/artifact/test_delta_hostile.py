"""Hostile deltas: damaged or lying sparse sections, tensor indexes and derivation rows are refused
with the delta error, never read past their end, never allocated beyond what the result can hold."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import artifact as A

from .delta_models import build_model, int8_codes, int8_pair, qdq_models, squeezenet_like


def test_truncated_or_damaged_sparse_sections_are_refused_with_the_delta_error() -> None:
    old, new = int8_pair(0.01, size=20_000)
    delta = A.make_delta(old, new)
    assert A.read_delta_header(delta).format_version == 2
    tail = range(max(81, len(delta) - 400), len(delta))  # the sparse section is the end of the delta
    for cut in tail:
        with pytest.raises(A.DeltaFormatError):
            A.apply_delta(old, delta[:cut])
    for position in tail:
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(delta)
            damaged[position] ^= flip
            try:
                rebuilt = A.apply_delta(old, bytes(damaged))
            except A.DeltaError:
                continue
            assert rebuilt == new  # only where the flipped bits did not matter


def _sparse_int8_delta(size: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(old, new, the delta up to its sparse section, that section as the encoder writes it): where the codes
    of a 1 % int8 change moved, and zigzag(±1) = 2 or 1."""
    from artifact import _sparse

    old, new = int8_pair(0.01, size=size)
    delta = A.make_delta(old, new)
    codes_old, codes_new = int8_codes(0.01, size)
    moved = codes_new.astype(np.int16) - codes_old
    positions = np.flatnonzero(moved).astype(np.int64)
    values = np.where(moved[positions] > 0, 2, 1).astype(np.uint8)
    section = _sparse.section([_sparse.Sparse(size, positions, values)], 9)
    assert delta.endswith(section)
    return old, new, delta[: len(delta) - len(section)], section


def test_sparse_counts_beyond_the_tensor_are_refused_before_anything_is_allocated() -> None:
    """A hostile sparse section claims more changes than the tensor holds, or a change past its end."""
    from artifact import _sparse

    size = 20_000
    old, new, prefix, real = _sparse_int8_delta(size)
    assert A.apply_delta(old, prefix + real) == new

    too_many = _sparse.Sparse(size + 10, np.arange(size + 10, dtype=np.int64), np.ones(size + 10, np.uint8))
    with pytest.raises(A.DeltaFormatError, match="more changes than a tensor holds"):
        A.apply_delta(old, prefix + _sparse.section([too_many], 9))
    past_end = _sparse.Sparse(size * 64, np.array([size * 63], np.int64), np.ones(1, np.uint8))
    with pytest.raises(A.DeltaFormatError, match=r"outside its tensor|do not match"):
        A.apply_delta(old, prefix + _sparse.section([past_end], 9))


def test_a_delta_listing_a_million_empty_tensors_is_refused_before_its_index_is_read() -> None:
    """Empty tensors cost nothing in the result, and their index rows compress to nothing: a count
    bounded only by the result's length let a few KB make the decoder build millions of entries."""
    import hashlib
    import tracemalloc

    from artifact import delta as D
    from artifact._frames import U32, compress

    base, result = b"not a model, so no tensor to reference " * 4, bytes(4 << 20)
    count = 1 << 20  # rows (gap 0, length 0, RAW, width 1, ref 0), column by column
    index = bytes(16 * count) + bytes([1]) * (2 * count) + bytes(4 * count)
    frames = [compress(index, 1), compress(result, 1)]
    no_words = b"\x01" + U32.pack(len(empty := compress(b"", 1))) + empty  # the one (empty) byte plane of width 1
    body = struct.pack(">II", count, 0) + b"".join(U32.pack(len(f)) + f for f in frames) + no_words
    sums = hashlib.sha256(base).digest(), hashlib.sha256(result).digest()
    delta = D._HEADER.pack(D.MAGIC, 1, *sums, len(result), len(base)) + body
    assert len(delta) < 64 * 1024

    tracemalloc.start()
    try:
        with pytest.raises(A.DeltaFormatError, match=f"implausible {count} tensors"):
            A.apply_delta(base, delta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"refusing the delta allocated {peak} bytes"


def test_a_model_with_more_tensors_than_a_delta_lists_is_diffed_as_a_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from artifact import delta as D

    base = squeezenet_like(0)
    old, new = build_model(base), build_model([(n, w * 1.01, r) for n, w, r in base])
    assert len(base) > 2
    monkeypatch.setattr(D, "MAX_TENSORS", 2)
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new


# --- hostile deltas: seeded fuzz loops over the decoded structure, not only the bytes on the wire ---


@pytest.fixture(scope="module")
def qdq_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return qdq_models(tmp_path_factory.mktemp("qdq"))


def _index_parts(delta: bytes) -> tuple[bytes, int, int, bytes, bytes]:
    """A delta cut around its tensor index: header, the two entry counts, the inflated index, the rest."""
    from artifact import delta as D
    from artifact._frames import Reader, inflate

    r = Reader(delta, D._HEADER.size)
    count, n_derived = struct.unpack(">II", r.take(8, "the entry counts"))
    index = inflate(r.frame("the tensor index"), 1 << 24, "tensor index")
    return delta[: D._HEADER.size], count, n_derived, index, delta[r.pos :]


def _with_index(header: bytes, count: int, n_derived: int, index: bytes, rest: bytes) -> bytes:
    from artifact._frames import U32, compress

    frame = compress(index, 3)
    return header + struct.pack(">II", count, n_derived) + U32.pack(len(frame)) + frame + rest


def _refused_or_exact(old: bytes, new: bytes, delta: bytes) -> None:
    """Anything but a DeltaError (an IndexError, a MemoryError …) fails the test, as does a wrong result."""
    try:
        rebuilt = A.apply_delta(old, delta)
    except A.DeltaError:
        return
    assert rebuilt == new


def test_a_derivation_row_for_an_entry_the_delta_lacks_is_refused(qdq_pair: tuple[bytes, bytes]) -> None:
    from artifact import delta as D

    old, new = qdq_pair
    header, count, n_derived, index, rest = _index_parts(A.make_delta(old, new))
    assert 0 < n_derived < count
    tensors = count * sum(np.dtype(t).itemsize for _, t in D._COLUMNS)
    rows = list(zip(*D._read_columns(index[tensors:], n_derived, D._DERIVED_COLUMNS), strict=True))
    for extra in [(count + 5, 0, 0, 0, 0, 0, 0, 0), rows[-1]]:  # past the last entry; an entry listed twice
        more = index[:tensors] + D._columns([*rows, extra], D._DERIVED_COLUMNS)
        with pytest.raises(A.DeltaFormatError, match="derivation rows"):
            A.apply_delta(old, _with_index(header, count, n_derived + 1, more, rest))


def test_fuzzed_tensor_indexes_are_refused_or_rebuild_the_model(qdq_pair: tuple[bytes, bytes]) -> None:
    """Random values in the index's columns and derivation rows (recompressed, so zstd cannot catch them)."""
    old, new = qdq_pair
    header, count, n_derived, index, rest = _index_parts(A.make_delta(old, new))
    rng = np.random.default_rng(1234)
    for _ in range(400):
        damaged = bytearray(index)
        for _ in range(int(rng.integers(1, 4))):
            damaged[int(rng.integers(len(damaged)))] = int(
                rng.choice([0, 1, 2, 5, 0x7F, 0x80, 0xFF, rng.integers(256)])
            )
        _refused_or_exact(old, new, _with_index(header, count, n_derived, bytes(damaged), rest))


def test_fuzzed_sparse_sections_are_refused_or_rebuild_the_model() -> None:
    """Random lies in the sparse table (counts, Rice parameters), the unary and remainder bit streams
    and the value planes: a gap coded past the end of its stream or tensor is refused, never read."""
    from artifact._frames import U32, Reader, compress, inflate

    size = 20_000
    old, new, prefix, section = _sparse_int8_delta(size)
    r = Reader(section)
    table, unary, rem = inflate(r.frame("table"), 1 << 20, "table"), r.frame("unary"), r.frame("rem")
    values = section[r.pos :]

    rng = np.random.default_rng(5678)
    for _ in range(400):
        parts = [bytearray(p) for p in (table, unary, rem, values)]
        for _ in range(int(rng.integers(1, 3))):
            part = parts[int(rng.integers(4))]
            what = rng.integers(3)
            if what == 0 and part:
                part[int(rng.integers(len(part)))] ^= 1 << int(rng.integers(8))
            elif what == 1 and part:
                part[int(rng.integers(len(part)))] = int(rng.choice([0, 0xFF, 0x20, 0x21, rng.integers(256)]))
            elif what == 2:
                cut = int(rng.integers(len(part) + 1))
                part[cut:] = bytes(int(rng.integers(3)))  # truncated, or cut and padded with zeros
        t, u, m, v = (bytes(p) for p in parts)
        z = compress(t, 3)
        forged = b"".join(U32.pack(len(p)) + p for p in (z, u, m)) + v
        _refused_or_exact(old, new, prefix + forged)
