"""The artifact contract's public face: exactly these names, none of them from a private module."""

from __future__ import annotations

import inspect

import artifact

PUBLIC = {
    "RevokedKeyError",
    "TrustError",
    "TrustExpiredError",
    "TrustFormatError",
    "TrustRollbackError",
    "TrustSignatureError",
    "TrustSkippedVersionError",
    "MAX_CHAIN_ROOTS",
    "MAX_TRUST_DOCUMENT_BYTES",
    "TrustChain",
    "TrustDocument",
    "TrustState",
    "parse_document",
    "sign_keys",
    "sign_root",
    "ArtifactError",
    "ArtifactFile",
    "ArtifactFormatError",
    "ArtifactHead",
    "BadSignatureError",
    "DecompressionBombError",
    "DeltaBaseMismatchError",
    "DeltaError",
    "DeltaFormatError",
    "DeltaInfo",
    "DeltaResultError",
    "DowngradeError",
    "ENCODING_ONNX_ZSTD",
    "ExpiredError",
    "Golden",
    "GoldenCase",
    "GraphIO",
    "HashMismatchError",
    "InputSpec",
    "KeyFileError",
    "LengthError",
    "MAX_MANIFEST_BYTES",
    "MAX_VERSION",
    "MODEL_NAME_PATTERN",
    "Manifest",
    "ManifestError",
    "ModelMismatchError",
    "OnnxInfo",
    "OutputSpec",
    "PayloadError",
    "PayloadInfo",
    "Preprocess",
    "SHA256_HEX_PATTERN",
    "Signature",
    "SignatureError",
    "SigningKey",
    "StreamVerifier",
    "TensorIO",
    "ThresholdError",
    "TooLongError",
    "TruncatedError",
    "TrustPolicy",
    "UnknownKeyError",
    "UnsupportedEncodingError",
    "VerifiedArtifact",
    "VerifiedBytes",
    "VerifiedManifest",
    "VerifyKey",
    "apply_delta",
    "artifact_bytes",
    "build_manifest",
    "canonical_json",
    "check_bytes",
    "decode_payload",
    "encode_payload",
    "format_time",
    "fsync_dir",
    "generate_key",
    "golden_seed_input",
    "image_to_input",
    "input_shape",
    "install_delta",
    "install_full",
    "key_id",
    "load_private_key",
    "load_public_key",
    "make_delta",
    "parse_manifest",
    "parse_time",
    "read_artifact",
    "read_artifact_head",
    "read_delta_header",
    "read_graph_io",
    "read_verified",
    "save_private_key",
    "save_public_key",
    "seal_artifact",
    "seeded_input",
    "sign_manifest",
    "verify_artifact",
    "verify_manifest",
    "verify_onnx",
    "write_artifact",
    "write_atomic",
}


def test_exported_names_are_exactly_the_public_face() -> None:
    assert set(artifact.__all__) == PUBLIC and len(artifact.__all__) == len(PUBLIC)
    namespace: dict[str, object] = {}
    exec("from artifact import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_every_public_attribute_is_exported_and_none_is_private() -> None:
    public_attrs = {n for n, v in vars(artifact).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public_attrs == PUBLIC  # nothing imported into the package and left out of __all__
    for name in PUBLIC:
        home = getattr(getattr(artifact, name), "__module__", "artifact")
        if home.startswith("artifact"):  # classes and functions: defined in a public module
            assert not any(part.startswith("_") for part in home.split(".")), (name, home)
