"""Publishing: only authentic, intact, loadable, newer artifacts enter the registry (threat → test)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

import artifact as A
from server.storage import open_storage

from . import helpers
from .conftest import ADMIN, Env, assert_problem, publish


def test_publish_then_list_and_inspect(env: Env, client: TestClient) -> None:
    data = env.artifact(1)
    r = client.post("/v1/models/shapes/versions", content=data, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/models/shapes/versions/1"
    body = r.json()
    assert body["version"] == 1 and body["revoked"] is False
    assert body["artifact_sha256"] == hashlib.sha256(data).hexdigest()

    models = client.get("/v1/models", headers=ADMIN).json()
    assert models == [
        {
            "name": "shapes",
            "created_at": models[0]["created_at"],
            "versions": 1,
            "latest_version": 1,
            "offered_version": None,  # published, not rolled out: no device is offered it yet
        }
    ]
    assert [v["version"] for v in client.get("/v1/models/shapes/versions", headers=ADMIN).json()] == [1]
    detail = client.get("/v1/models/shapes/versions/1", headers=ADMIN).json()
    parts = A.read_artifact(data)
    assert base64.b64decode(detail["manifest_b64"]) == parts.manifest_bytes
    assert A.canonical_json(detail["manifest"]) == parts.manifest_bytes
    assert detail["signatures"] == parts.signature_dicts()


def test_publish_stores_payload_and_decoded_model_by_digest(env: Env, client: TestClient) -> None:
    data = env.artifact(1)
    body = publish(client, data)
    storage = open_storage(env.settings())
    assert storage.get(body["payload"]["sha256"]) == A.read_artifact(data).payload
    assert storage.get(body["onnx"]["sha256"]) == helpers.onnx_of(data)


def test_same_file_again_is_idempotent_200(env: Env, client: TestClient) -> None:
    data = env.artifact(1)
    publish(client, data)
    r = client.post("/v1/models/shapes/versions", content=data, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["version"] == 1
    assert len(client.get("/v1/models/shapes/versions", headers=ADMIN).json()) == 1


def test_same_version_with_other_bytes_is_409(env: Env, client: TestClient) -> None:
    publish(client, env.artifact(1))
    other = env.artifact(1, onnx_bytes=helpers.tiny_classifier(0, version_tweak=7))
    assert_problem(client.post("/v1/models/shapes/versions", content=other, headers=ADMIN), 409, "version-conflict")


def test_replayed_older_version_is_409(env: Env, client: TestClient) -> None:
    old = env.artifact(1)
    publish(client, env.artifact(2))
    doc = assert_problem(
        client.post("/v1/models/shapes/versions", content=old, headers=ADMIN), 409, "version-not-above-latest"
    )
    assert "latest published version 2" in doc["detail"]


def test_version_of_a_revoked_latest_cannot_be_reused(env: Env, client: TestClient) -> None:
    publish(client, env.artifact(1))
    publish(client, env.artifact(2))
    assert client.post("/v1/models/shapes/versions/2/revoke", headers=ADMIN).status_code == 200
    other_two = env.artifact(2, onnx_bytes=helpers.tiny_classifier(0, version_tweak=9))
    assert_problem(client.post("/v1/models/shapes/versions", content=other_two, headers=ADMIN), 409)
    assert publish(client, env.artifact(3))["version"] == 3


def _tampered_payload(env: Env) -> bytes:
    data = env.artifact(1)
    payload = bytearray(A.read_artifact(data).payload)
    payload[len(payload) // 2] ^= 0x01
    return helpers.reseal(data, payload=bytes(payload))


def _tampered_manifest(env: Env) -> bytes:
    data = env.artifact(1)
    manifest = A.read_artifact(data).manifest_bytes.replace(b'"circle"', b'"bircle"')
    return helpers.reseal(data, manifest=manifest)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("signed by an untrusted key", "UnknownKeyError"),
        ("manifest altered after signing", "BadSignatureError"),
        ("payload altered after signing", "HashMismatchError"),
        ("manifest for another model", "ModelMismatchError"),
        ("expired manifest", "ExpiredError"),
        ("unknown manifest schema", "ManifestError"),
        ("not an artifact file", "ArtifactFormatError"),
        ("truncated file", "ArtifactFormatError"),
        ("signed model that ONNX cannot load", "onnx"),
        ("signed model whose input differs from the manifest", "onnx"),
        ("signed model whose opset differs from the manifest", "onnx"),
    ],
)
def test_invalid_artifact_is_422_with_reason(
    env: Env, client: TestClient, other_key: A.SigningKey, case: str, reason: str
) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    if case == "signed by an untrusted key":
        data = helpers.build_artifact(other_key, version=1)
    elif case == "manifest altered after signing":
        data = _tampered_manifest(env)
    elif case == "payload altered after signing":
        data = _tampered_payload(env)
    elif case == "manifest for another model":
        data = env.artifact(1, model="other-model")
    elif case == "expired manifest":
        data = env.artifact(1, created_at=A.format_time(past - timedelta(days=1)), expires_at=A.format_time(past))
    elif case == "unknown manifest schema":
        good = A.read_artifact(env.artifact(1))
        manifest = json.loads(good.manifest_bytes)
        manifest["schema"] = 2
        data = helpers.reseal(env.artifact(1), manifest=A.canonical_json(manifest))
    elif case == "not an artifact file":
        data = b"PK\x03\x04 this is a zip file, not an artifact" * 10
    elif case == "truncated file":
        data = env.artifact(1)[:-10]
    elif case == "signed model that ONNX cannot load":
        data = env.artifact(1, onnx_bytes=b"\x08\x07garbage that is not a model protobuf" * 20)
    elif case == "signed model whose input differs from the manifest":
        onnx_bytes = helpers.tiny_classifier(0)
        payload = A.encode_payload(onnx_bytes)
        fields = helpers.manifest_fields(onnx_bytes, payload)
        fields["onnx"]["input"]["shape"] = ["batch", 3, 16, 16]
        data = A.seal_artifact(A.build_manifest(**fields), payload, [env.key])
    else:
        onnx_bytes = helpers.tiny_classifier(0)
        payload = A.encode_payload(onnx_bytes)
        fields = helpers.manifest_fields(onnx_bytes, payload)
        fields["onnx"]["opset"] = 13
        data = A.seal_artifact(A.build_manifest(**fields), payload, [env.key])
    doc = assert_problem(
        client.post("/v1/models/shapes/versions", content=data, headers=ADMIN), 422, "invalid-artifact"
    )
    assert doc["reason"] == reason, doc
    assert client.get("/v1/models", headers=ADMIN).json() == []


def test_server_without_publisher_keys_accepts_nothing(env: Env) -> None:
    client = env.client(publisher_keys=[])
    doc = assert_problem(client.post("/v1/models/shapes/versions", content=env.artifact(1), headers=ADMIN), 422)
    assert "OTA_PUBLISHER_KEYS" in doc["detail"]


def test_oversize_artifact_refused_413_before_the_body_is_read(env: Env) -> None:
    client = env.client(max_artifact_bytes=4096)
    data = env.artifact(1, onnx_bytes=helpers.tiny_classifier(0, extra_rows=400))
    assert len(data) > 4096
    doc = assert_problem(client.post("/v1/models/shapes/versions", content=data, headers=ADMIN), 413)
    assert doc["limit"] == 4096


def test_oversize_chunked_artifact_is_cut_off_at_the_limit(env: Env) -> None:
    client = env.client(max_artifact_bytes=4096)
    sent = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for i in range(1000):
            sent.append(i)
            yield b"\0" * 1024

    doc = assert_problem(client.post("/v1/models/shapes/versions", content=chunks(), headers=ADMIN), 413)
    assert "4096" in doc["detail"]
    assert client.get("/v1/models", headers=ADMIN).json() == []


def test_unauthenticated_upload_is_refused_without_reading_it(env: Env, client: TestClient) -> None:
    assert_problem(client.post("/v1/models/shapes/versions", content=env.artifact(1)), 401)
    assert client.get("/v1/models", headers=ADMIN).json() == []


def test_model_name_in_path_is_validated(client: TestClient, env: Env) -> None:
    assert_problem(client.post("/v1/models/Bad%20Name/versions", content=env.artifact(1), headers=ADMIN), 422)


def test_unknown_model_and_version_are_404(client: TestClient, env: Env) -> None:
    assert_problem(client.get("/v1/models/nope/versions", headers=ADMIN), 404, "model-not-found")
    publish(client, env.artifact(1))
    assert_problem(client.get("/v1/models/shapes/versions/9", headers=ADMIN), 404, "version-not-found")
    assert_problem(client.post("/v1/models/shapes/versions/9/revoke", headers=ADMIN), 404, "version-not-found")


def test_threshold_of_two_keys_needs_both_signatures(env: Env, other_key: A.SigningKey, tmp_path) -> None:  # type: ignore[no-untyped-def]
    second = tmp_path / "second.pem"
    A.save_public_key(other_key, second)
    client = env.client(publisher_keys=[*env.base["publisher_keys"], second], publisher_threshold=2)
    one = env.artifact(1)
    doc = assert_problem(client.post("/v1/models/shapes/versions", content=one, headers=ADMIN), 422)
    assert doc["reason"] == "ThresholdError"
    both = helpers.build_artifact([env.key, other_key], version=1)
    assert client.post("/v1/models/shapes/versions", content=both, headers=ADMIN).status_code == 201
