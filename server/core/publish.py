"""Publishing a version: the artifact goes through `artifact`'s one door, then into storage and the registry.

Order matters. Everything that can refuse the artifact runs before anything is stored: the door
(schema, model name, signatures against the latest keys document of the root of trust, else
``OTA_PUBLISHER_KEYS`` (:mod:`server.core.trust`), expiry, version above the latest,
lengths, sha256, bounded decode) and then the ONNX checks of :mod:`server.core.onnx_check`.

Memory is bounded by what is authentic. The upload is read from its spool file: first only the
manifest and signatures (the file's head), which are verified before a single payload byte is read,
so a junk signature on a 250 MiB file costs a few kilobytes. The payload's length must then be the
signed one, and the signed ONNX length at most ``OTA_MAX_MODEL_BYTES``; only then is the payload
streamed through the length/sha256 check, and decoded with that bound. Blobs are
written before the database row, so a committed version always has its blobs; a failure between
the two leaves only unreferenced, content-addressed blobs behind. The storage GC may delete a blob
with the same bytes (an older, collected version's) between the two: so the row is inserted under
the blob lock, held shared, after writing any blob found missing again (:mod:`server.core.gc`).

Re-uploading the very same file is idempotent (200); the same version with other bytes, or a
version not above the latest (revoked ones count), is a conflict (409). The version check runs
twice: in the door against the latest known before verification, and again under the model's row
lock (PostgreSQL) or write lock (SQLite), so two concurrent publishes cannot both win.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import artifact as A

from ..data import lifecycle as lifecycle_data
from ..data import registry as registry_data
from ..db.models import ModelVersion
from ..db.session import Database, utcnow
from ..errors import (
    ConstraintViolationError,
    InvalidArtifactError,
    VersionConflictError,
    VersionNotAboveLatestError,
)
from ..storage import Storage
from .onnx_check import check_model


@dataclass(frozen=True)
class PublishResult:
    created: bool
    version: ModelVersion
    previous_offered: int | None  # the version devices ran before this one: eager delta base


class Publisher:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        trust: Callable[[], A.TrustPolicy | None],
        *,
        max_model_bytes: int = 64 << 20,
    ) -> None:
        self.db = db
        self.storage = storage
        self.trust = trust  # read at each publish: a keys document uploaded a moment ago applies
        self.max_model_bytes = max_model_bytes

    def publish(self, *, model: str, source: BinaryIO, length: int, publisher: str) -> PublishResult:
        """Verify and store an uploaded artifact file of `length` bytes read from `source` (positioned at
        its start; blocking, run it in a worker thread)."""
        trust = self.trust()
        if trust is None:
            raise InvalidArtifactError(
                "this server trusts no publisher keys (OTA_PUBLISHER_KEYS is empty), so it accepts no artifact",
                reason="NoTrustedKeys",
            )
        try:
            head = A.read_artifact_head(source, length)
        except A.ArtifactError as e:
            raise _invalid(e) from e
        with self.db.session() as session:
            existing_model = registry_data.get_model(session, name=model)
            latest = (
                registry_data.latest_version_number(session, model_id=existing_model.id) if existing_model else None
            )
        try:
            verified = A.verify_manifest(
                head.manifest_bytes, head.signatures, trust=trust, expected_model=model, installed_version=latest
            )
        except A.DowngradeError as e:
            # Authentic, unexpired, but not new: the same file again (200) or a conflict (409).
            manifest = A.parse_manifest(head.manifest_bytes)
            artifact_sha256 = _file_sha256(source, length)
            return self._existing(model=model, version=manifest.version, artifact_sha256=artifact_sha256, cause=e)
        except A.ArtifactError as e:
            raise _invalid(e) from e
        manifest = verified.manifest
        if manifest.onnx.length > self.max_model_bytes:
            raise InvalidArtifactError(
                f"the model decodes to {manifest.onnx.length} bytes; this server accepts at most "
                f"{self.max_model_bytes} (OTA_MAX_MODEL_BYTES)",
                reason="ModelTooLargeError",
            )
        try:
            if head.payload_length != manifest.payload.length:  # refused before a payload byte is read
                raise (A.TooLongError if head.payload_length > manifest.payload.length else A.TruncatedError)(
                    f"payload is {head.payload_length} bytes; the manifest signs {manifest.payload.length}"
                )
            artifact_sha256, payload = _read_payload(source, head, A.StreamVerifier.payload(verified))
            onnx = A.install_full(verified, payload)
        except A.ArtifactError as e:
            raise _invalid(e) from e
        check_model(onnx, manifest.onnx)

        self.storage.put(payload.data)
        self.storage.put(onnx)
        row = ModelVersion(
            version=manifest.version,
            parent_version=manifest.parent_version,
            manifest_bytes=verified.manifest_bytes,
            signatures=A.canonical_json([s.to_dict() for s in verified.signatures]).decode("utf-8"),
            artifact_sha256=artifact_sha256,
            payload_sha256=manifest.payload.sha256,
            payload_length=manifest.payload.length,
            payload_encoding=manifest.payload.encoding,
            onnx_sha256=manifest.onnx.sha256,
            onnx_length=manifest.onnx.length,
            created_at=manifest.created,
            expires_at=manifest.expires,
            published_at=utcnow(),
            published_by=publisher,
        )
        previous: int | None = None
        try:
            with self.db.session() as session:
                model_row = registry_data.lock_or_create_model(session, name=model)
                latest_now = registry_data.latest_version_number(session, model_id=model_row.id)
                lost_race = latest_now is not None and latest_now >= manifest.version
                if not lost_race:
                    lifecycle_data.lock_blobs(session, exclusive=False)
                    self.storage.put(payload.data)  # a no-op unless the GC deleted the same bytes meanwhile
                    self.storage.put(onnx)
                    heads = registry_data.offered_heads(session)
                    previous = heads[model].version if model in heads else None
                    row.model_id = model_row.id
                    registry_data.add_version(session, version=row)
                    session.commit()
        except ConstraintViolationError:  # an identical (model, version) insert committed first
            lost_race = True
        if lost_race:
            return self._existing(model=model, version=manifest.version, artifact_sha256=artifact_sha256)
        return PublishResult(created=True, version=row, previous_offered=previous)

    def _existing(
        self, *, model: str, version: int, artifact_sha256: str, cause: Exception | None = None
    ) -> PublishResult:
        with self.db.session() as session:
            model_row = registry_data.get_model(session, name=model)
            row = registry_data.get_version(session, model_id=model_row.id, version=version) if model_row else None
            latest = registry_data.latest_version_number(session, model_id=model_row.id) if model_row else None
        if row is not None and row.artifact_sha256 == artifact_sha256:
            return PublishResult(created=False, version=row, previous_offered=None)
        if row is not None:
            raise VersionConflictError(
                f"version {version} of {model!r} is already published with different bytes "
                f"(sha256 {row.artifact_sha256[:16]}…); publish a new version instead"
            ) from cause
        raise VersionNotAboveLatestError(
            f"version {version} of {model!r} is not above the latest published version {latest}"
        ) from cause


_CHUNK = 1 << 20


def _read_payload(source: BinaryIO, head: A.ArtifactHead, check: A.StreamVerifier) -> tuple[str, A.VerifiedBytes]:
    """The artifact file's sha256, and its payload streamed through the signed length/sha256 check."""
    whole = hashlib.sha256()
    source.seek(0)
    whole.update(source.read(head.payload_offset))
    while check.remaining:
        chunk = source.read(min(_CHUNK, check.remaining))
        if not chunk:
            break
        whole.update(chunk)
        check.update(chunk)
    return whole.hexdigest(), check.finish()


def _file_sha256(source: BinaryIO, length: int) -> str:
    whole = hashlib.sha256()
    source.seek(0)
    remaining = length
    while remaining > 0:
        chunk = source.read(min(_CHUNK, remaining))
        if not chunk:
            break
        whole.update(chunk)
        remaining -= len(chunk)
    return whole.hexdigest()


def _invalid(e: A.ArtifactError) -> InvalidArtifactError:
    return InvalidArtifactError(str(e), reason=type(e).__name__)
