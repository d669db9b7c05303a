"""Model-aware deltas: byte-exact for any pair of models, and loud on the wrong base or a bad delta."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import artifact as A

from .delta_models import build_model, changed, int8_pair, qdq_models, squeezenet_like

DTYPES = [np.float32, np.float16, np.int8, np.uint8, np.int64, np.float64]


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


def test_unchanged_tensors_cost_nothing() -> None:
    base = squeezenet_like(0)
    old = build_model(base)
    head = ("classifier.1.weight", np.ones((10, 64), np.float32), True)
    new = build_model([*base, head])
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) < 3000  # eight 73 KB tensors referenced, not resent


def test_nudged_weights_beat_plain_compression() -> None:
    base = squeezenet_like(0)
    rng = np.random.default_rng(1)
    moved = [(n, (w + w.std() * 1e-3 * rng.standard_normal(w.shape)).astype(np.float32), r) for n, w, r in base]
    old, new = build_model(base), build_model(moved)
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) < 0.65 * len(A.encode_payload(new))  # generic tools save ~nothing here


def test_unrelated_model_is_no_larger_than_the_full_payload() -> None:
    old, new = build_model(squeezenet_like(0)), build_model(squeezenet_like(1))
    delta = A.make_delta(old, new)
    assert A.apply_delta(old, delta) == new
    assert len(delta) <= 1.01 * len(A.encode_payload(new))


def test_wrong_base_is_refused() -> None:
    a, b, c = (build_model(squeezenet_like(s)) for s in range(3))
    delta = A.make_delta(a, b)
    with pytest.raises(A.DeltaBaseMismatchError):
        A.apply_delta(c, delta)


def test_corrupt_deltas_are_refused() -> None:
    base = squeezenet_like(0)
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
    base = squeezenet_like(0)
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


def test_quantized_fine_tune_pays_only_for_real_changes(tmp_path: Path) -> None:
    """int8 QDQ: when a channel's scale moves, all its codes are re-rounded. Predicting that from the
    new scales (and bias scales as input · weight scale) leaves only the genuine changes to send."""
    import bsdiff4

    old, new = qdq_models(tmp_path)
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
        new = changed(values, where, rng)
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


def test_a_one_percent_change_is_sent_sparse_and_a_ninety_percent_change_dense() -> None:
    old, new = int8_pair(0.01)
    sparse, dense = A.make_delta(old, new), A.make_delta(old, new, sparse=False)
    assert A.apply_delta(old, sparse) == new
    assert A.read_delta_header(sparse).format_version == 2
    # ~500 changes of ±1 among 50,000 codes: ~8 bits for where, ~1 bit for which way.
    assert len(sparse) < 0.7 * len(dense)
    assert len(sparse) < 1.2 * 500 * 9 / 8 + 200

    old, new = int8_pair(0.9)
    chosen = A.make_delta(old, new)
    assert chosen == A.make_delta(old, new, sparse=False)  # dense planes, unchanged format
    assert A.read_delta_header(chosen).format_version == 1
    assert A.apply_delta(old, chosen) == new


def test_version_1_deltas_still_apply_and_unknown_versions_are_named() -> None:
    old, new = int8_pair(0.01)
    v1 = A.make_delta(old, new, sparse=False)
    assert A.read_delta_header(v1).format_version == 1
    assert A.apply_delta(old, v1) == new
    v2 = A.make_delta(old, new)
    with pytest.raises(A.DeltaFormatError, match="version 3 is not supported"):
        A.apply_delta(old, v2[:8] + b"\x03" + v2[9:])
    # A version-1 delta may not use the sparse section: a v2 delta relabelled v1 is refused.
    with pytest.raises(A.DeltaFormatError):
        A.apply_delta(old, v2[:8] + b"\x01" + v2[9:])
