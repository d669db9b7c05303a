"""The registry as admins read it, and revocation. Publishing a version is :mod:`server.core.publish`."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import delta_rows as delta_data
from ..data import lifecycle as lifecycle_data
from ..data import registry as registry_data
from ..data.registry import ModelSummary
from ..db.models import Delta, Model, ModelVersion
from ..db.session import Database, Session
from ..errors import BlobCollectedError, BlobNotFoundError, ModelNotFoundError, VersionNotFoundError


@dataclass(frozen=True)
class VersionRecord:
    """One version with the deltas built towards it (newest base first)."""

    version: ModelVersion
    deltas: list[Delta]


class Registry:
    """Each method is one transaction (blocking; run it in a worker thread)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list_models(self) -> list[ModelSummary]:
        with self.db.session() as session:
            return registry_data.list_models(session)

    def list_versions(self, model: str) -> list[ModelVersion]:
        """Newest first; :class:`ModelNotFoundError` if nothing was ever published under that name."""
        with self.db.session() as session:
            return registry_data.list_versions(session, model_id=_model(session, model).id)

    def get_version(self, model: str, version: int) -> VersionRecord:
        with self.db.session() as session:
            m = _model(session, model)
            row = _version(session, m, version)
            return VersionRecord(row, delta_data.list_deltas(session, model_id=m.id, to_version=version))

    def model_has_blob(self, model: str, sha256: str) -> bool:
        """Whether `sha256` is the payload, ONNX or a delta of a version of `model` (a device's blob scope)."""
        with self.db.session() as session:
            return registry_data.model_has_blob(session, model=model, sha256=sha256)

    def missing_blob(self, sha256: str, cause: BlobNotFoundError) -> BlobNotFoundError | BlobCollectedError:
        """What to answer for a blob storage does not have: 410 if the storage GC collected it, else the 404."""
        with self.db.session() as session:
            gone = lifecycle_data.collected_blob(session, sha256=sha256)
        if gone is None:
            return cause
        return BlobCollectedError(
            f"blob {sha256} ({gone.what}) was deleted by the storage GC on {gone.collected_at:%Y-%m-%d %H:%M} UTC: "
            "that version is revoked or superseded and no device uses it; poll for a current update"
        )

    def revoke(self, model: str, version: int, *, reason: str | None) -> ModelVersion:
        """Mark the version revoked (committed; revoking again keeps the first reason)."""
        with self.db.session() as session:
            row = _version(session, _model(session, model), version)
            registry_data.revoke_version(session, version=row, reason=reason)
            session.commit()
            return row


def _model(session: Session, name: str) -> Model:
    model = registry_data.get_model(session, name=name)
    if model is None:
        raise ModelNotFoundError(f"no model {name!r} has been published")
    return model


def _version(session: Session, model: Model, version: int) -> ModelVersion:
    row = registry_data.get_version(session, model_id=model.id, version=version)
    if row is None:
        raise VersionNotFoundError(f"model {model.name!r} has no version {version}")
    return row
