"""Versions condemned by a revoked publisher key stop being offered, automatically.

A keys document that revokes a publisher key makes every device refuse the versions that key
signed (:mod:`device_agent.trust`): the server must stop offering them too. A version is
*condemned* when the door (:func:`artifact.verify_manifest`) refuses it under the stored keys
document with :class:`artifact.RevokedKeyError`: the signatures that still count are fewer than
the threshold and at least one is by a revoked key. A version signed by a revoked key *and* by
enough trusted ones stays.

When a keys document is stored (``PUT /v1/trust/keys``, and again when the same one is uploaded
once more, so that a retry finishes an interrupted sweep) and at every start for the document
already stored, each live version (neither revoked nor collected) that is condemned is marked
revoked exactly as ``POST …/revoke`` does, with a reason naming the key and the keys document, and
a warning is logged. From there the existing machinery applies: the registry view offers it
neither as the baseline nor as a rollout's version (so no delta towards it either), the rollout
controller aborts its active rollout (``version_revoked``, the detail carries the reason), a new
rollout of it is refused with 409 ``version-revoked`` saying why, and the storage GC collects it once
no device runs it. A rollout of a version the stored keys document condemns but no sweep reached
(published with a key verified a moment before the revoking document was stored) is refused the
same way, and the version marked then.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import artifact as A

from ..data import registry as registry_data
from ..data.rollouts import Session
from ..db.models import ModelVersion
from ..db.session import Database, utcnow

log = logging.getLogger("ota.trust")


@dataclass(frozen=True)
class Revocations:
    """The stored keys document's policy (with at least one revoked key) and its version."""

    policy: A.TrustPolicy
    keys_version: int


@dataclass(frozen=True)
class RevokedVersion:
    model: str
    version: int
    keyid: str
    reason: str


def condemning_key(policy: A.TrustPolicy, manifest_bytes: bytes, signatures: str) -> str | None:
    """The revoked key id for which the door refuses this version under `policy`; None if it does not."""
    if not policy.revoked:
        return None
    try:
        sigs = json.loads(signatures)
    except ValueError:
        return None
    if not isinstance(sigs, list):
        return None
    revoked = [s["keyid"] for s in sigs if isinstance(s, dict) and s.get("keyid") in policy.revoked]
    if not revoked:
        return None
    try:
        A.verify_manifest(manifest_bytes, sigs, trust=policy, expected_model=None)
    except A.RevokedKeyError:
        return str(revoked[0])
    except A.ArtifactError:  # expired, or refused for another reason: not this sweep's business
        return None
    return None


def reason(keyid: str, keys_version: int) -> str:
    return f"signed by publisher key {keyid}, revoked by keys document v{keys_version}: devices refuse it"


def revoke_if_condemned(
    session: Session, revocations: Revocations, *, model: str, row: ModelVersion
) -> RevokedVersion | None:
    """Mark `row` revoked if the keys document condemns it (in the caller's transaction, which
    logs it once committed); the revocation when this call made it, None otherwise (not condemned,
    or already revoked)."""
    keyid = condemning_key(revocations.policy, row.manifest_bytes, row.signatures)
    if keyid is None:
        return None
    why = reason(keyid, revocations.keys_version)
    if not registry_data.revoke_if_live(session, version_id=row.id, reason=why, at=utcnow()):
        return None
    return RevokedVersion(model, row.version, keyid, why)


def revoke_condemned(db: Database, revocations: Revocations) -> list[RevokedVersion]:
    """Revoke every live version the keys document condemns (blocking; one transaction; idempotent)."""
    out = []
    with db.session() as session:
        for model, row in registry_data.live_versions(session):
            revoked = revoke_if_condemned(session, revocations, model=model, row=row)
            if revoked is not None:
                out.append(revoked)
        session.commit()
    for r in out:
        log.warning("%s v%d revoked: %s", r.model, r.version, r.reason)
    return out
