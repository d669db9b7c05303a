"""The door for a whole artifact: manifest checks, then payload, then the decoded ONNX model.

:func:`verify_artifact` chains the steps of :mod:`artifact.verify` in the order DESIGN.md fixes and
returns the verified ONNX bytes. Callers that stream (the agent's download) verify the manifest with
:func:`~artifact.verify.verify_manifest`, then install through :mod:`artifact.install`, which is
also what this door runs after the manifest checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .container import ArtifactFile, artifact_bytes, read_artifact
from .errors import ManifestError
from .install import install_full
from .keys import Signature, SigningKey
from .manifest import Manifest
from .verify import TrustPolicy, VerifiedManifest, check_bytes, verify_manifest


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact every check passed: the manifest, the payload and the decoded ONNX model."""

    verified: VerifiedManifest
    payload: bytes
    onnx: bytes

    @property
    def manifest(self) -> Manifest:
        return self.verified.manifest


def sign_manifest(manifest: Manifest, keys: Sequence[SigningKey]) -> tuple[bytes, list[Signature]]:
    """Canonical manifest bytes and one signature per key."""
    if not keys:
        raise ManifestError("at least one signing key is needed")
    data = manifest.canonical_bytes()
    return data, [k.sign(data) for k in keys]


def seal_artifact(manifest: Manifest, payload: bytes, keys: Sequence[SigningKey]) -> bytes:
    """A complete, signed artifact file. The manifest must describe `payload` (checked here)."""
    check_bytes(payload, length=manifest.payload.length, sha256=manifest.payload.sha256, what="payload")
    data, sigs = sign_manifest(manifest, keys)
    return artifact_bytes(data, sigs, payload)


def verify_artifact(
    artifact: bytes | ArtifactFile,
    *,
    trust: TrustPolicy,
    expected_model: str | None,
    installed_version: int | None = None,
    now: datetime | None = None,
) -> VerifiedArtifact:
    """Every check of the door over a complete artifact file (or its already split parts)."""
    parts = artifact if isinstance(artifact, ArtifactFile) else read_artifact(artifact)
    verified = verify_manifest(
        parts.manifest_bytes,
        parts.signatures,
        trust=trust,
        expected_model=expected_model,
        installed_version=installed_version,
        now=now,
    )
    return VerifiedArtifact(verified, parts.payload, install_full(verified, parts.payload))
