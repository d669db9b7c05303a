"""Model-aware deltas: byte-exact for any pair of models, and loud on the wrong base or a bad delta."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import artifact as A

DTYPES = [np.float32, np.float16, np.int8, np.uint8, np.int64, np.float64]


def build_model(tensors: list[tuple[str, np.ndarray, bool]], extra_nodes: int = 0) -> bytes:
    """An ONNX model with the given initializers (name, values, as raw_data?) and some nodes."""
    inits = []
    for name, values, raw in tensors:
        t = numpy_helper.from_array(values, name)
        if not raw and values.dtype == np.float32:  # the typed-field form: lives in the skeleton
            t = helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.reshape(-1).tolist())
        inits.append(t)
    nodes = [helper.make_node("Identity", ["x"], [f"y{i}"], name=f"n{i}") for i in range(extra_nodes + 1)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1]) for i in range(extra_nodes + 1)],
        initializer=inits,
    )
    return helper.make_model(graph).SerializeToString()


@st.composite
def tensor(draw: st.DrawFn, name: str) -> tuple[str, np.ndarray, bool]:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(shape) * 50).astype(dtype)
    return name, values, draw(st.booleans())


@st.composite
def model_pair(draw: st.DrawFn) -> tuple[bytes, bytes]:
    names = draw(st.lists(st.text("abcxyz._/", min_size=1, max_size=6), min_size=0, max_size=6, unique=True))
    old = [draw(tensor(n)) for n in names]
    new: list[tuple[str, np.ndarray, bool]] = []
    for name, values, raw in old:
        action = draw(st.sampled_from(["keep", "nudge", "replace", "remove", "rename", "reshape", "resize"]))
        if action == "keep":
            new.append((name, values, raw))
        elif action == "nudge":
            step = np.ones_like(values) if values.dtype.kind in "iu" else values * 1e-3
            new.append((name, (values + step).astype(values.dtype), raw))
        elif action == "replace":
            new.append(draw(tensor(name)))
        elif action == "rename":
            new.append((name + "_renamed", values, raw))
        elif action == "reshape":
            new.append((name, values.reshape(-1), raw))
        elif action == "resize":
            new.append((name, np.concatenate([values.reshape(-1), values.reshape(-1)[:1]]), raw))
    added = draw(st.lists(st.text("klm", min_size=1, max_size=4), max_size=3, unique=True))
    new += [draw(tensor("new_" + n)) for n in added]
    if draw(st.booleans()):
        new.reverse()
    return build_model(old, draw(st.integers(0, 2))), build_model(new, draw(st.integers(0, 2)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_pair())
def test_delta_is_byte_exact_for_any_pair(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    info = A.read_delta_header(delta)
    assert (info.result_length, info.base_length) == (len(new), len(old))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_delta_is_byte_exact_for_arbitrary_bytes(old: bytes, new: bytes) -> None:
    """Not ONNX at all: the generic path still rebuilds exactly."""
    assert A.apply_delta(old, A.make_delta(old, new)) == new


def _squeezenet_like(seed: int) -> list[tuple[str, np.ndarray, bool]]:
    rng = np.random.default_rng(seed)
    return [
        (f"features.{i}.weight", (rng.standard_normal((64, 32, 3, 3)) * 0.05).astype(np.float32), True)
        for i in range(8)
    ]


def test_unchanged_tensors_cost_nothing() -> None:
    base = _squeezenet_like(0)
    old = build_model(base)
    head = ("classifier.1.weight", np.ones((10, 64), np.float32), True)
    new = build_model([*base, head])
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) < 3000  # eight 73 KB tensors referenced, not resent


def test_nudged_weights_beat_plain_compression() -> None:
    base = _squeezenet_like(0)
    rng = np.random.default_rng(1)
    moved = [(n, (w + w.std() * 1e-3 * rng.standard_normal(w.shape)).astype(np.float32), r) for n, w, r in base]
    old, new = build_model(base), build_model(moved)
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) < 0.65 * len(A.encode_payload(new))  # generic tools save ~nothing here


def test_unrelated_model_is_no_larger_than_the_full_payload() -> None:
    old, new = build_model(_squeezenet_like(0)), build_model(_squeezenet_like(1))
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) <= 1.01 * len(A.encode_payload(new))


def test_wrong_base_is_refused() -> None:
    a, b, c = (build_model(_squeezenet_like(s)) for s in range(3))
    delta = A.make_delta(a, b)
    with pytest.raises(A.DeltaBaseMismatchError):
        A.apply_delta(c, delta)


def test_corrupt_deltas_are_refused() -> None:
    base = _squeezenet_like(0)
    old = build_model(base)
    new = build_model([(n, w * 1.01, r) for n, w, r in base])
    delta = A.make_delta(old, new)
    with pytest.raises(A.DeltaFormatError, match="magic"):
        A.apply_delta(old, b"X" + delta[1:])
    with pytest.raises(A.DeltaFormatError, match="version"):
        A.apply_delta(old, delta[:8] + b"\x09" + delta[9:])
    with pytest.raises(A.DeltaFormatError, match="truncated"):
        A.apply_delta(old, delta[: len(delta) // 2])
    with pytest.raises(A.DeltaFormatError):
        A.apply_delta(old, delta + b"\0")
    with pytest.raises(A.DeltaFormatError, match="shorter"):
        A.apply_delta(old, delta[:20])
    # A flipped byte deep in the data: caught by zstd or by the result hash, never returned.
    damaged = bytearray(delta)
    damaged[len(delta) - 100] ^= 0xFF
    with pytest.raises((A.DeltaFormatError, A.DeltaResultError)):
        A.apply_delta(old, bytes(damaged))


def test_cli_make_and_apply(tmp_path: Path) -> None:
    base = _squeezenet_like(0)
    (tmp_path / "old.onnx").write_bytes(build_model(base))
    new = build_model([(n, w * 0.999, r) for n, w, r in base])
    (tmp_path / "new.onnx").write_bytes(new)
    cli = [sys.executable, "-m", "model_builder"]
    made = subprocess.run(
        [*cli, "delta", "make", "old.onnx", "new.onnx", "--out", "d.bin"], cwd=tmp_path, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    applied = subprocess.run(
        [*cli, "delta", "apply", "old.onnx", "d.bin", "--out", "rebuilt.onnx"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "rebuilt.onnx").read_bytes() == new
    wrong = subprocess.run(
        [*cli, "delta", "apply", "new.onnx", "d.bin", "--out", "x.onnx"], cwd=tmp_path, capture_output=True, text=True
    )
    assert wrong.returncode == 2
    assert "made against base" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "x.onnx").exists()


def _qdq_pair(tmp_path: Path) -> tuple[bytes, bytes]:
    """A small conv net, quantized to int8 QDQ by ONNX Runtime before and after a full fine-tune."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 3, 3, 3)) * 0.2).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((10, 64, 3, 3)) * 0.05).astype(np.float32)
    b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)

    def fp32_model(ws: list[np.ndarray]) -> bytes:
        names = ["w1", "b1", "w2", "b2"]
        graph = helper.make_graph(
            [
                helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["c1"], ["r1"]),
                helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
                helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
                helper.make_node("Flatten", ["p"], ["logits"]),
            ],
            "net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
            initializer=[numpy_helper.from_array(w, n) for w, n in zip(ws, names, strict=True)],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    calib = rng.standard_normal((32, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    def quantize(model: bytes, tag: str) -> bytes:
        (tmp_path / f"{tag}.onnx").write_bytes(model)
        quantize_static(
            str(tmp_path / f"{tag}.onnx"),
            str(tmp_path / f"{tag}.q.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        return (tmp_path / f"{tag}.q.onnx").read_bytes()

    base = [w1, b1, w2, b2]
    # The largest weight of every output channel grows by 3 %: each channel's scale moves with it,
    # so every quantized value of the channel is re-rounded, and the bias codes follow the scales.
    tuned = []
    for w in base:
        t = w.copy().reshape(w.shape[0], -1)
        peak = np.abs(t).argmax(axis=1)
        t[np.arange(t.shape[0]), peak] *= 1.03
        tuned.append(t.reshape(w.shape).astype(np.float32))
    return quantize(fp32_model(base), "v1"), quantize(fp32_model(tuned), "v2")


def test_quantized_fine_tune_pays_only_for_real_changes(tmp_path: Path) -> None:
    """int8 QDQ: when a channel's scale moves, all its codes are re-rounded. Predicting that from the
    new scales (and bias scales as input · weight scale) leaves only the genuine changes to send."""
    import bsdiff4

    old, new = _qdq_pair(tmp_path)
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) < 0.3 * len(bsdiff4.diff(old, new))

    # Damage the derivation rows: the result must be refused, never returned wrong.
    for position in range(81, len(delta), 3):  # every third byte after the 81-byte header
        damaged = bytearray(delta)
        damaged[position] ^= 0x5A
        try:
            rebuilt = A.apply_delta(old, bytes(damaged))
        except A.DeltaError:
            continue
        assert rebuilt == new  # only possible where the flipped bits did not matter


# --- sparse changes (issue 14): few values of a tensor change -----------------------------------

SPARSE_DTYPES = [np.int8, np.uint8, np.float32, np.float16, np.int64]


def _changed(values: np.ndarray, where: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`values` with the flagged elements moved: ±1 codes for integers, a small nudge for floats."""
    out = values.reshape(-1).copy()
    if out.dtype.kind in "iu":
        info = np.iinfo(out.dtype)
        step = rng.choice([-1, 1], size=int(where.sum()))
        moved = out[where].astype(np.int64) + step
        moved = np.where((moved < info.min) | (moved > info.max), out[where].astype(np.int64) - step, moved)
        out[where] = moved.astype(out.dtype)
    else:
        out[where] = (out[where] * (1 + 1e-2 * rng.standard_normal(int(where.sum())))).astype(out.dtype)
        out[where] = np.where(out[where] == values.reshape(-1)[where], out[where] + 1, out[where])
    return out.reshape(values.shape)


@st.composite
def sparse_pair(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Tensors where 0 % … 100 % of the values change, first and last elements included, or the shape."""
    tensors_old, tensors_new = [], []
    for i in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(SPARSE_DTYPES))
        size = draw(st.integers(1, 3000))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        values = (rng.standard_normal(size) * 40).astype(dtype)
        density = draw(st.sampled_from([0.0, 0.005, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0]))
        where = rng.random(size) < density
        where[0] |= draw(st.booleans())
        where[-1] |= draw(st.booleans())
        new = _changed(values, where, rng)
        if draw(st.integers(0, 5)) == 0:  # changed in shape: falls back to a whole-tensor code
            new = np.concatenate([new, new[:1]])
        tensors_old.append((f"t{i}", values, True))
        tensors_new.append((f"t{i}", new, True))
    return build_model(tensors_old), build_model(tensors_new)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_pair())
def test_sparse_changes_round_trip_at_every_density(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) <= len(A.make_delta(old, new, sparse=False))  # the chooser never makes it larger


def _int8_codes(density: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    old = rng.integers(-100, 100, size).astype(np.int8)
    return old, _changed(old, rng.random(size) < density, rng)


def _int8_pair(density: float, size: int = 50_000) -> tuple[bytes, bytes]:
    old, new = _int8_codes(density, size)
    return build_model([("w", old, True)]), build_model([("w", new, True)])


def test_a_one_percent_change_is_sent_sparse_and_a_ninety_percent_change_dense() -> None:
    old, new = _int8_pair(0.01)
    sparse, dense = A.make_delta(old, new), A.make_delta(old, new, sparse=False)
    assert A.apply_delta(old, sparse) == new
    assert A.read_delta_header(sparse).format_version == 2
    # ~500 changes of ±1 among 50,000 codes: ~8 bits for where, ~1 bit for which way.
    assert len(sparse) < 0.7 * len(dense)
    assert len(sparse) < 1.2 * 500 * 9 / 8 + 200

    old, new = _int8_pair(0.9)
    chosen = A.make_delta(old, new)
    assert chosen == A.make_delta(old, new, sparse=False)  # dense planes, unchanged format
    assert A.read_delta_header(chosen).format_version == 1
    assert A.apply_delta(old, chosen) == new


def test_version_1_deltas_still_apply_and_unknown_versions_are_named() -> None:
    old, new = _int8_pair(0.01)
    v1 = A.make_delta(old, new, sparse=False)
    assert A.read_delta_header(v1).format_version == 1
    assert A.apply_delta(old, v1) == new
    v2 = A.make_delta(old, new)
    with pytest.raises(A.DeltaFormatError, match="version 3 is not supported"):
        A.apply_delta(old, v2[:8] + b"\x03" + v2[9:])
    # A version-1 delta may not use the sparse section: a v2 delta relabelled v1 is refused.
    with pytest.raises(A.DeltaFormatError):
        A.apply_delta(old, v2[:8] + b"\x01" + v2[9:])


def test_truncated_or_damaged_sparse_sections_are_refused_with_the_delta_error() -> None:
    old, new = _int8_pair(0.01, size=20_000)
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

    old, new = _int8_pair(0.01, size=size)
    delta = A.make_delta(old, new)
    codes_old, codes_new = _int8_codes(0.01, size)
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

    base = _squeezenet_like(0)
    old, new = build_model(base), build_model([(n, w * 1.01, r) for n, w, r in base])
    assert len(base) > 2
    monkeypatch.setattr(D, "MAX_TENSORS", 2)
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new


# --- hostile deltas: seeded fuzz loops over the decoded structure, not only the bytes on the wire ---


@pytest.fixture(scope="module")
def qdq_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return _qdq_pair(tmp_path_factory.mktemp("qdq"))


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
