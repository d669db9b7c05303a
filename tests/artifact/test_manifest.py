"""Manifest schema: errors name the field, canonical bytes are stable, floats survive."""

from __future__ import annotations

import json
from typing import Any

import pytest

import artifact as A
from tests.support import manifest_fields

ONNX = b"\x08\x07" * 50
PAYLOAD = b"payload-bytes"


def fields(**overrides: Any) -> dict[str, Any]:
    return manifest_fields(ONNX, PAYLOAD, **overrides)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"model": "Bad Name"}, "model"),
        ({"version": 0}, "version"),
        ({"schema": 2}, "schema"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2026-01-01T00:00:00+02:00"}, "created_at"),
        ({"payload": {"encoding": "gzip", "length": 1, "sha256": "0" * 64}}, "payload.encoding"),
        ({"payload": {"encoding": "onnx+zstd", "length": 1, "sha256": "XYZ"}}, "payload.sha256"),
        ({"labels": ["only-one"]}, "labels"),
        ({"preprocess": {"size": 64, "mean": [0, 0, 0], "std": [1, 0, 1], "layout": "NCHW"}}, "preprocess.std"),
        ({"golden": {"tolerance": 1e-4, "cases": []}}, "golden.cases"),
        ({"parent_version": 7}, "parent_version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_field_is_named(override: dict[str, Any], field: str) -> None:
    with pytest.raises(A.ManifestError) as info:
        A.build_manifest(**fields(**override))
    assert field.split(".")[0] in str(info.value)


def test_missing_required_field_is_named() -> None:
    f = fields()
    del f["expires_at"]
    with pytest.raises(A.ManifestError, match="expires_at"):
        A.build_manifest(**f)


def test_golden_logits_must_match_labels() -> None:
    golden = {"tolerance": 1e-4, "cases": [{"seed": i, "top1": 0, "logits": [1.0, 2.0]} for i in range(8)]}
    with pytest.raises(A.ManifestError, match=r"golden.cases\[0\].logits"):
        A.build_manifest(**fields(golden=golden))


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    m = A.build_manifest(**fields(labels=["café", "naïve", "日本"]))
    data = m.canonical_bytes()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "日本".encode() in data  # not \u-escaped
    assert A.parse_manifest(data) == m


def test_floats_survive_the_round_trip() -> None:
    tricky = {"accuracy": 0.1 + 0.2, "tiny": 5e-324, "huge": 1.7976931348623157e308, "third": 1 / 3, "int": 7}
    m = A.build_manifest(**fields(metrics=tricky))
    again = A.parse_manifest(m.canonical_bytes())
    assert again.metrics == tricky
    assert again.canonical_bytes() == m.canonical_bytes()


def test_non_finite_numbers_refused() -> None:
    with pytest.raises(A.ManifestError, match="metrics"):
        A.build_manifest(**fields(metrics={"loss": float("nan")}))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"version": 2**31}, "version"),
        ({"version": 10**40}, "version"),
        ({"version": 2**31 + 5, "parent_version": 2**31}, "parent_version"),
    ],
)
def test_versions_past_int32_are_refused_like_every_other_part_does(override: dict[str, Any], field: str) -> None:
    with pytest.raises(A.ManifestError, match=field):
        A.build_manifest(**fields(**override))
    assert A.build_manifest(**fields(version=A.MAX_VERSION)).version == 2**31 - 1


def test_a_metric_integer_of_thousands_of_digits_is_a_manifest_error_not_a_crash() -> None:
    data = A.build_manifest(**fields()).canonical_bytes()
    huge = data.replace(b'"params":579', b'"params":' + b"9" * 5000)
    with pytest.raises(A.ManifestError, match="number"):
        A.parse_manifest(huge)
    with pytest.raises(A.ManifestError, match="metrics"):
        A.build_manifest(**fields(metrics={"params": 2**60}))


def test_oversized_manifest_refused() -> None:
    labels = [f"class-{i:05d}-" + "x" * 100 for i in range(700)]
    golden = {"tolerance": 1e-4, "cases": [{"seed": i, "top1": 0, "logits": [0.0] * 700} for i in range(8)]}
    m = A.build_manifest(**fields(labels=labels, golden=golden))
    with pytest.raises(A.ManifestError, match="limit"):
        m.canonical_bytes()
    with pytest.raises(A.ManifestError, match="limit"):
        A.parse_manifest(b" " * (A.MAX_MANIFEST_BYTES + 1))


def test_duplicate_keys_are_not_canonical() -> None:
    data = A.build_manifest(**fields()).canonical_bytes()
    dup = b'{"model":"evil",' + data[1:]
    with pytest.raises(A.ManifestError):
        A.parse_manifest(dup)


def test_golden_case_needs_exactly_one_source() -> None:
    golden = {"tolerance": 1e-4, "cases": [{"top1": 0, "logits": [1.0, 2.0, 3.0]}] * 8}
    with pytest.raises(A.ManifestError, match="exactly one"):
        A.build_manifest(**fields(golden=golden))


def test_seeded_input_is_deterministic_and_in_range() -> None:
    a = A.seeded_input(42, (1, 3, 8, 8))
    b = A.seeded_input(42, (1, 3, 8, 8))
    assert a.dtype.name == "float32" and a.shape == (1, 3, 8, 8)
    assert a.tobytes() == b.tobytes()
    assert a.min() >= -1 and a.max() < 1 and a.std() > 0.4
    assert A.seeded_input(43, (1, 3, 8, 8)).tobytes() != a.tobytes()


def _splitmix64_reference(seed: int, count: int) -> list[float]:
    """SplitMix64 in plain Python integers (Steele, Lea, Flood 2014): the spec devices follow."""
    out, mask = [], (1 << 64) - 1
    for i in range(1, count + 1):
        z = (seed + 0x9E3779B97F4A7C15 * i) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out.append((z >> 40) / 2**23 - 1.0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1])
def test_seeded_input_matches_the_reference_generator(seed: int) -> None:
    assert A.seeded_input(seed, (2, 3, 4)).reshape(-1).tolist() == _splitmix64_reference(seed, 24)


def test_image_to_input_normalises_in_float32() -> None:
    import numpy as np

    pre = A.Preprocess(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0], layout="NCHW")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0] = [255, 0, 51]
    rgb[5, 2] = [9, 200, 255]
    x = A.image_to_input(rgb, pre)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == pytest.approx(2.0) and x[0, 1, 0, 0] == pytest.approx(-1.0)
    assert x[0, 2, 0, 0] == pytest.approx(0.2 - 0.5)
    nhwc = A.image_to_input(rgb, pre.model_copy(update={"layout": "NHWC"}))
    assert nhwc.shape == (1, 8, 8, 3) and np.array_equal(nhwc[0].transpose(2, 0, 1), x[0])
    with pytest.raises(ValueError, match="resize"):
        A.image_to_input(np.zeros((3, 3, 3), np.uint8), pre)


def test_one_rfc3339_form_in_utc_seconds_for_manifests_milliseconds_for_events() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime(2026, 1, 31, 14, 0, 5, 987_654, tzinfo=timezone(timedelta(hours=2)))
    assert A.format_time(moment) == "2026-01-31T12:00:05Z"
    assert A.format_time(moment, milliseconds=True) == "2026-01-31T12:00:05.987Z"
    assert A.parse_time(A.format_time(moment)) == moment.replace(microsecond=0).astimezone(UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        A.format_time(datetime(2026, 1, 31))
