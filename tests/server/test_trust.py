"""The root of trust on the server: uploads of root and keys documents, the served chain, and
artifacts refused once their publisher key is revoked — and versions that key signed no longer
offered. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, update

import artifact as A
from server.db.models import Model, ModelVersion
from tests.support import trust_keys, trust_root

from . import helpers
from .conftest import ADMIN, Env, assert_problem, bearer, enroll, publish, release

DATABASES = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)


@pytest.fixture(scope="module")
def root_keys() -> list[A.SigningKey]:
    return [A.generate_key() for _ in range(3)]


def put(client: object, kind: str, body: bytes, status: int) -> dict[str, object]:
    r = client.put(f"/v1/trust/{kind}", content=body, headers={**ADMIN, "Content-Type": "application/json"})  # type: ignore[attr-defined]
    assert r.status_code == status, r.text
    doc: dict[str, object] = r.json()
    return doc


def refused(client: object, kind: str, body: bytes, status: int, slug: str | None = None) -> dict[str, Any]:
    """PUT a document the server must refuse (as the admin); its problem document."""
    return assert_problem(client.put(f"/v1/trust/{kind}", content=body, headers=ADMIN), status, slug)  # type: ignore[attr-defined]


@DATABASES
def test_revoked_publisher_key_cannot_publish(
    env: Env, root_keys: list[A.SigningKey], signing_key: A.SigningKey, other_key: A.SigningKey
) -> None:
    client = env.client()
    publish(client, env.artifact(1))  # OTA_PUBLISHER_KEYS trusts signing_key: as before any trust document
    r1 = root_keys[0]
    root1 = trust_root(1, [r1], [r1])
    put(client, "root", root1, 201)
    assert client.get("/v1/trust").json()["tag"] == "r1-k0"
    keys = put(client, "keys", trust_keys(1, [other_key], [r1], revoked=[signing_key]), 201)
    assert keys["revoked"] == [signing_key.keyid] and keys["keys"] == [other_key.keyid]

    refused = client.post(f"/v1/models/{helpers.MODEL}/versions", content=env.artifact(2), headers=ADMIN)
    problem = assert_problem(refused, 422, "invalid-artifact")
    assert problem["reason"] == "RevokedKeyError" and signing_key.keyid in problem["detail"]
    assert publish(client, helpers.build_artifact(other_key, version=2))["version"] == 2

    chain = client.get("/v1/trust")
    assert chain.status_code == 200 and chain.json()["tag"] == "r1-k1"
    assert client.get("/v1/trust", headers={"If-None-Match": chain.headers["etag"]}).status_code == 304
    state = A.TrustState.from_root(root1).update(A.TrustChain.from_json(chain.json()), now=datetime.now(UTC))
    assert state.policy() is not None and set(state.policy().keys) == {other_key.keyid}  # type: ignore[union-attr]
    poll = client.get("/v1/device/update", params={"current_version": 2}, headers=bearer(enroll(client)))
    assert poll.status_code == 204 and poll.headers["ota-trust-version"] == "r1-k1"


@DATABASES
def test_trust_uploads_refuse_rollback_skips_and_expired_documents(
    client: TestClient, root_keys: list[A.SigningKey], other_key: A.SigningKey
) -> None:
    r1, r2, r3 = root_keys
    assert_problem(client.put("/v1/trust/keys", content=b"{}"), 401)
    refused(client, "keys", trust_keys(1, [other_key], [r1]), 409, "trust-conflict")  # no root yet
    root1 = trust_root(1, [r1], [r1])
    refused(client, "root", b"[1, 2", 422, "invalid-trust-document")
    put(client, "root", root1, 201)
    assert put(client, "root", root1, 200)["created"] is False

    skipped = refused(client, "root", trust_root(3, [r3], [r1, r3]), 409, "trust-conflict")
    assert skipped["reason"] == "TrustSkippedVersionError"
    unsigned = refused(client, "root", trust_root(2, [r2], [r2]), 422, "invalid-trust-document")
    assert unsigned["reason"] == "TrustSignatureError"

    put(client, "keys", trust_keys(1, [other_key], [r1]), 201)
    put(client, "keys", trust_keys(3, [other_key], [r1]), 201)
    replayed = refused(client, "keys", trust_keys(2, [other_key], [r1]), 409, "trust-conflict")
    assert replayed["reason"] == "TrustRollbackError"
    expired = trust_keys(4, [other_key], [r1], expires=datetime.now(UTC) - timedelta(minutes=1))
    problem = refused(client, "keys", expired, 422)
    assert problem["reason"] == "TrustExpiredError" and "expired" in problem["detail"]
    assert client.get("/v1/trust").json()["tag"] == "r1-k3"


@DATABASES
def test_root_rotation_serves_the_keys_document_only_once_the_new_root_signed_it(
    client: TestClient, root_keys: list[A.SigningKey], other_key: A.SigningKey
) -> None:
    r1, r2, _ = root_keys
    put(client, "root", trust_root(1, [r1], [r1]), 201)
    put(client, "keys", trust_keys(1, [other_key], [r1]), 201)
    rotated = put(client, "root", trust_root(2, [r2], [r1, r2]), 201)
    assert "sign a new keys document" in str(rotated["warning"])
    chain = client.get("/v1/trust").json()
    assert chain["tag"] == "r2-k0" and chain["keys"] is None and len(chain["roots"]) == 2
    # the server still verifies uploads with the keys document it accepted
    assert publish(client, helpers.build_artifact(other_key, version=1))["version"] == 1
    assert refused(client, "keys", trust_keys(2, [other_key], [r1]), 422)["reason"] == "TrustSignatureError"
    put(client, "keys", trust_keys(2, [other_key], [r2]), 201)
    chain = client.get("/v1/trust").json()
    assert chain["tag"] == "r2-k2" and json.dumps(chain["keys"]).count(other_key.keyid) == 1


def offered(client: TestClient, token: str, current: int | None) -> int | None:
    """The version the device is offered (None: 204)."""
    params = {} if current is None else {"current_version": current}
    r = client.get("/v1/device/update", params=params, headers=bearer(token))
    assert r.status_code in (200, 204), r.text
    return r.json()["version"] if r.status_code == 200 else None


def version(client: TestClient, number: int) -> dict[str, object]:
    r = client.get(f"/v1/models/{helpers.MODEL}/versions/{number}", headers=ADMIN)
    assert r.status_code == 200, r.text
    doc: dict[str, object] = r.json()
    return doc


def unrevoke_in_the_database(env: Env, number: int) -> None:
    """What a server from before automatic revocation left behind (or a publish that was verified a
    moment before the revoking keys document was stored): the version is not marked revoked."""
    engine = create_engine(env.database_url)
    try:
        with engine.begin() as conn:
            model_id = conn.scalar(select(Model.id).where(Model.name == helpers.MODEL))
            conn.execute(
                update(ModelVersion)
                .where(ModelVersion.model_id == model_id, ModelVersion.version == number)
                .values(revoked_at=None, revoked_reason=None)
            )
    finally:
        engine.dispose()


@DATABASES
def test_keys_document_revoking_a_key_stops_offering_its_versions_and_aborts_their_rollout(
    env: Env, root_keys: list[A.SigningKey], signing_key: A.SigningKey, other_key: A.SigningKey
) -> None:
    client = env.client(rollout_eval_seconds=3600)  # the controller acts only when told (here: by the upload)
    r1 = root_keys[0]
    put(client, "root", trust_root(1, [r1], [r1]), 201)
    put(client, "keys", trust_keys(1, [signing_key, other_key], [r1]), 201)
    release(client, env.artifact(1))  # v1, by key A: the baseline
    publish(client, helpers.build_artifact(other_key, version=2))  # v2, by key B
    staged = {"model": helpers.MODEL, "version": 2, "stages": [{"percent": 100, "soak_seconds": 3600}]}
    started = client.post("/v1/rollouts", json={**staged, "min_devices": 100}, headers=ADMIN)
    assert started.status_code == 201 and started.json()["state"] == "running", started.text
    fresh, on_v1 = enroll(client, "cam-fresh"), enroll(client, "cam-v1")
    assert offered(client, fresh, None) == 2 and offered(client, on_v1, 1) == 2

    revoking = trust_keys(2, [signing_key], [r1], revoked=[other_key])
    revoked = put(client, "keys", revoking, 201)["revoked_versions"]
    assert isinstance(revoked, list)
    assert [(v["model"], v["version"], v["keyid"]) for v in revoked] == [(helpers.MODEL, 2, other_key.keyid)]
    # v2 is offered to nobody: the fresh device gets the baseline, which is still valid; v1's device nothing
    assert offered(client, fresh, None) == 1 and offered(client, on_v1, 1) is None

    rollout = client.get(f"/v1/rollouts/{started.json()['id']}", headers=ADMIN).json()
    assert rollout["state"] == "aborted" and rollout["reason"] == "version_revoked"
    assert rollout["history"][-1]["by"] == "system" and other_key.keyid in rollout["history"][-1]["detail"]
    v2 = version(client, 2)
    assert v2["revoked"] is True and v2["revoked_at"] is not None
    assert other_key.keyid in str(v2["revoked_reason"]) and "keys document v2" in str(v2["revoked_reason"])
    assert version(client, 1)["revoked"] is False  # signed by the key that stays trusted

    refused = client.post("/v1/rollouts", json=staged, headers=ADMIN)
    assert other_key.keyid in assert_problem(refused, 409, "version-revoked")["detail"]
    assert put(client, "keys", revoking, 200)["revoked_versions"] == []  # the same document again: nothing more


@DATABASES
def test_versions_of_a_key_revoked_before_this_server_knew_are_revoked_at_start_or_at_rollout(
    env: Env, root_keys: list[A.SigningKey], signing_key: A.SigningKey, other_key: A.SigningKey
) -> None:
    client = env.client()
    r1 = root_keys[0]
    put(client, "root", trust_root(1, [r1], [r1]), 201)
    put(client, "keys", trust_keys(1, [signing_key, other_key], [r1]), 201)
    release(client, env.artifact(1))
    publish(client, helpers.build_artifact(other_key, version=2))
    put(client, "keys", trust_keys(2, [signing_key], [r1], revoked=[other_key]), 201)
    assert version(client, 2)["revoked"] is True

    unrevoke_in_the_database(env, 2)
    assert version(client, 2)["revoked"] is False
    restarted = env.client()  # a start judges the stored keys document again
    v2 = version(restarted, 2)
    assert v2["revoked"] is True and other_key.keyid in str(v2["revoked_reason"])

    unrevoke_in_the_database(env, 2)  # and a rollout of it is refused, not started, even before a start
    refused = restarted.post("/v1/rollouts", json={"model": helpers.MODEL, "version": 2}, headers=ADMIN)
    assert other_key.keyid in assert_problem(refused, 409, "version-revoked")["detail"]
    assert version(restarted, 2)["revoked"] is True
    assert version(restarted, 1)["revoked"] is False
