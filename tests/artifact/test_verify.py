"""The one door refuses every tampering, each with its own error type (threat → test)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

import artifact as A
from tests.support import tiny_classifier


def _verify(data: bytes, trust: A.TrustPolicy, **kw: object) -> A.VerifiedArtifact:
    kw.setdefault("expected_model", "shapes")
    return A.verify_artifact(data, trust=trust, **kw)  # type: ignore[arg-type]


def _replace_part(
    data: bytes, *, manifest: bytes | None = None, sigs: object = None, payload: bytes | None = None
) -> bytes:
    parts = A.read_artifact(data)
    signatures = parts.signatures if sigs is None else tuple(A.Signature.from_dict(s) for s in sigs)  # type: ignore[attr-defined]
    return A.artifact_bytes(
        manifest if manifest is not None else parts.manifest_bytes,
        signatures,
        payload if payload is not None else parts.payload,
    )


def test_sign_verify_round_trip(make_artifact: Callable[..., bytes], trust: A.TrustPolicy, onnx_model: bytes) -> None:
    result = _verify(make_artifact(), trust, installed_version=2)
    assert result.onnx == onnx_model
    assert result.manifest.version == 3
    assert result.verified.signed_by == tuple(trust.keys)


def test_flipped_bit_in_manifest_breaks_signature(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    data = make_artifact()
    manifest = A.read_artifact(data).manifest_bytes
    i = manifest.index(b'"circle"') + 1
    tampered = manifest[:i] + bytes([manifest[i] ^ 0x01]) + manifest[i + 1 :]  # "circle" → "bircle": still valid JSON
    with pytest.raises(A.BadSignatureError):
        _verify(_replace_part(data, manifest=tampered), trust)


@pytest.mark.parametrize("position", [0, 1000, -10])
def test_flipped_bit_in_payload_fails_hash(
    make_artifact: Callable[..., bytes], trust: A.TrustPolicy, position: int
) -> None:
    data = make_artifact()
    payload = bytearray(A.read_artifact(data).payload)
    payload[position] ^= 0x10
    with pytest.raises(A.HashMismatchError):
        _verify(_replace_part(data, payload=bytes(payload)), trust)


def test_flipped_bit_in_signature(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    data = make_artifact()
    sig = A.read_artifact(data).signatures[0]
    raw = bytearray(base64.b64decode(sig.sig))
    raw[5] ^= 0x04
    forged = [{"keyid": sig.keyid, "sig": base64.b64encode(bytes(raw)).decode()}]
    with pytest.raises(A.BadSignatureError):
        _verify(_replace_part(data, sigs=forged), trust)


def test_signature_by_unknown_key(
    make_artifact: Callable[..., bytes], trust: A.TrustPolicy, other_key: A.SigningKey
) -> None:
    with pytest.raises(A.UnknownKeyError):
        _verify(make_artifact(keys=[other_key]), trust)


def test_signature_copied_under_a_trusted_keyid(
    make_artifact: Callable[..., bytes], trust: A.TrustPolicy, other_key: A.SigningKey, signing_key: A.SigningKey
) -> None:
    """An attacker signs with their own key but claims the trusted key's id."""
    data = make_artifact(keys=[other_key])
    sig = A.read_artifact(data).signatures[0]
    with pytest.raises(A.BadSignatureError):
        _verify(_replace_part(data, sigs=[{"keyid": signing_key.keyid, "sig": sig.sig}]), trust)


def test_another_models_manifest(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    with pytest.raises(A.ModelMismatchError):
        _verify(make_artifact(model="faces"), trust)


def test_threshold_not_met(
    make_artifact: Callable[..., bytes], signing_key: A.SigningKey, other_key: A.SigningKey
) -> None:
    two_of_two = A.TrustPolicy.of([signing_key.verify_key, other_key.verify_key], threshold=2)
    with pytest.raises(A.ThresholdError):
        _verify(make_artifact(keys=[signing_key]), two_of_two)
    # The same key twice counts once.
    with pytest.raises(A.ThresholdError):
        _verify(make_artifact(keys=[signing_key, signing_key]), two_of_two)
    assert _verify(make_artifact(keys=[signing_key, other_key]), two_of_two).manifest.version == 3


def test_expired_manifest(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    past = A.format_time(datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(A.ExpiredError):
        _verify(make_artifact(expires_at=past), trust)
    # A manifest without expiry never expires.
    assert _verify(make_artifact(expires_at=None), trust).manifest.expires is None


@pytest.mark.parametrize("installed", [3, 4])
def test_equal_or_lower_version_is_a_downgrade(
    make_artifact: Callable[..., bytes], trust: A.TrustPolicy, installed: int
) -> None:
    with pytest.raises(A.DowngradeError):
        _verify(make_artifact(), trust, installed_version=installed)


def test_payload_longer_than_declared(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    data = make_artifact()
    with pytest.raises(A.TooLongError):
        _verify(_replace_part(data, payload=A.read_artifact(data).payload + b"\0"), trust)


def test_payload_shorter_than_declared(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    data = make_artifact()
    with pytest.raises(A.TruncatedError):
        _verify(_replace_part(data, payload=A.read_artifact(data).payload[:-1]), trust)


def test_streaming_check_stops_at_the_first_extra_byte() -> None:
    """A download fed through the door never accumulates more than the signed length."""
    chunks_read = []

    def endless() -> object:
        while True:
            chunks_read.append(1)
            yield b"x" * 1000

    with pytest.raises(A.TooLongError):
        A.read_verified(endless(), length=5000, sha256="0" * 64, what="payload")  # type: ignore[arg-type]
    assert len(chunks_read) == 6


def test_zip_bomb_payload(signing_key: A.SigningKey, trust: A.TrustPolicy, onnx_model: bytes) -> None:
    """A signed payload that inflates far beyond onnx.length is stopped while decoding."""
    import hashlib

    import zstandard

    from tests.support import manifest_fields

    bomb = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(b"\0" * (64 << 20))
    fields = manifest_fields(onnx_model, bomb)
    data = A.seal_artifact(A.build_manifest(**fields), bomb, [signing_key])
    assert hashlib.sha256(bomb).hexdigest() == fields["payload"]["sha256"]
    with pytest.raises(A.DecompressionBombError):
        _verify(data, trust)


def test_payload_that_decodes_to_another_model(
    signing_key: A.SigningKey, trust: A.TrustPolicy, onnx_model: bytes
) -> None:
    from tests.support import manifest_fields

    other = tiny_classifier(seed=1)
    payload = A.encode_payload(other)
    fields = manifest_fields(onnx_model, payload)  # declares onnx_model's hash, ships `other`
    with pytest.raises(A.HashMismatchError, match="decoded ONNX"):
        _verify(A.seal_artifact(A.build_manifest(**fields), payload, [signing_key]), trust)


def test_order_schema_before_signature(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    """Garbage in the manifest is a ManifestError, even though the signature is also wrong."""
    data = make_artifact()
    with pytest.raises(A.ManifestError):
        _verify(_replace_part(data, manifest=b"{not json"), trust)


def test_manifest_that_is_not_canonical(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    data = make_artifact()
    pretty = json.dumps(json.loads(A.read_artifact(data).manifest_bytes), indent=1).encode()
    with pytest.raises(A.ManifestError, match="canonical"):
        _verify(_replace_part(data, manifest=pretty), trust)


def test_every_error_shares_the_base(make_artifact: Callable[..., bytes], trust: A.TrustPolicy) -> None:
    for exc in (A.BadSignatureError, A.UnknownKeyError, A.ThresholdError, A.TooLongError, A.DeltaBaseMismatchError):
        assert issubclass(exc, A.ArtifactError)
