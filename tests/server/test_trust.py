"""The root of trust on the server: uploads of root and keys documents, the served chain, and
artifacts refused once their publisher key is revoked. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

import artifact as A
from tests.support import trust_keys, trust_root

from . import helpers
from .conftest import ADMIN, Env, assert_problem, bearer, enroll, publish

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
