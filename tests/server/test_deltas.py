"""Deltas: offered when worth it, byte-exact, checked against the signed manifest, built once."""

from __future__ import annotations

import base64
import re
import threading
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select

import artifact as A
from server.db.models import Delta
from server.db.session import utcnow
from server.storage import open_storage
from tests.support import wait_for

from . import helpers
from .conftest import ADMIN, Env, bearer, download, enroll, release


def offer_with_delta(client: TestClient, token: str, current: int) -> dict:  # type: ignore[type-arg]
    def ready() -> dict | None:  # type: ignore[type-arg]
        r = client.get(f"/v1/device/update?current_version={current}", headers=bearer(token))
        assert r.status_code == 200, r.text
        offer: dict = r.json()  # type: ignore[type-arg]
        return offer if offer["delta"] is not None else None

    offer: dict = wait_for(ready, what=f"a delta from version {current}")  # type: ignore[type-arg]
    return offer


def builds(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'^ota_delta_builds_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def test_delta_is_offered_and_rebuilds_the_signed_model(
    env: Env, client: TestClient, signing_key: A.SigningKey
) -> None:
    v1, v2 = env.artifact(1), env.artifact(2)
    release(client, v1)
    release(client, v2)  # the delta 1 → 2 is built eagerly
    token = enroll(client, "dev-1")
    offer = offer_with_delta(client, token, 1)
    delta = offer["delta"]
    assert delta["from_version"] == 1
    assert delta["length"] < 0.6 * offer["download"]["length"]

    # What a device does: fetch the delta by its URL, check it against the offer, rebuild, and
    # accept the result only if it matches the *signed* ONNX digest of the manifest.
    delta_bytes = download(client, delta["url"]).content
    A.check_bytes(delta_bytes, length=delta["length"], sha256=delta["sha256"], what="delta")
    rebuilt = A.apply_delta(helpers.onnx_of(v1), delta_bytes)
    verified = A.verify_manifest(
        base64.b64decode(offer["manifest_b64"]),
        offer["signatures"],
        trust=A.TrustPolicy.of([signing_key.verify_key]),
        expected_model="shapes",
        installed_version=1,
    )
    A.check_bytes(rebuilt, length=verified.manifest.onnx.length, sha256=verified.manifest.onnx.sha256, what="onnx")
    assert rebuilt == helpers.onnx_of(v2)
    text = client.get("/metrics").text
    assert re.search(r'^ota_offers_total\{kind="delta"\} [1-9]', text, re.M)
    assert re.search(r'^ota_offer_bytes_total\{kind="delta"\} [1-9]', text, re.M)


def test_device_without_a_known_version_gets_the_full_payload(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1))
    release(client, env.artifact(2))
    token = enroll(client, "dev-1")
    offer_with_delta(client, token, 1)
    assert client.get("/v1/device/update?current_version=0", headers=bearer(token)).json()["delta"] is None


def test_delta_from_an_older_version_is_built_lazily(env: Env, client: TestClient) -> None:
    for v in (1, 2, 3):
        release(client, env.artifact(v))
    token = enroll(client, "dev-1")
    offer = offer_with_delta(client, token, 1)  # 1 → 3 was not built at publish time
    assert offer["version"] == 3 and offer["delta"]["from_version"] == 1
    detail = client.get("/v1/models/shapes/versions/3", headers=ADMIN).json()
    assert {(d["from_version"], d["status"]) for d in detail["deltas"]} == {(1, "ready"), (2, "ready")}


def test_delta_not_worth_it_is_not_offered(env: Env, client: TestClient) -> None:
    release(client, env.artifact(1, onnx_bytes=helpers.tiny_classifier(1)))
    release(client, env.artifact(2, onnx_bytes=helpers.tiny_classifier(2)))  # unrelated weights
    token = enroll(client, "dev-1")

    def settled() -> list:  # type: ignore[type-arg]
        return [
            d
            for d in client.get("/v1/models/shapes/versions/2", headers=ADMIN).json()["deltas"]
            if d["status"] != "pending"
        ]

    (row,) = wait_for(settled, what="the eager delta to finish")
    assert row["status"] == "oversize"
    assert client.get("/v1/device/update?current_version=1", headers=bearer(token)).json()["delta"] is None


def test_unknown_base_version_gets_no_delta_and_no_row(env: Env, client: TestClient) -> None:
    release(client, env.artifact(2))
    release(client, env.artifact(4))
    token = enroll(client, "dev-1")
    for _ in range(3):
        assert client.get("/v1/device/update?current_version=3", headers=bearer(token)).json()["delta"] is None

    def rows() -> list[int]:
        detail = client.get("/v1/models/shapes/versions/4", headers=ADMIN).json()
        return [d["from_version"] for d in detail["deltas"] if d["status"] != "pending"]

    assert wait_for(rows, what="the eager delta 2 → 4") == [2]  # and no row for the version that never was


def test_delta_is_built_once_across_two_server_processes(env: Env) -> None:
    a, b = env.client(), env.client()
    big = {
        v: env.artifact(v, onnx_bytes=helpers.tiny_classifier(0, version_tweak=v, extra_rows=4000)) for v in (1, 2, 3)
    }
    for v in (1, 2, 3):
        release(a, big[v])
    wait_for(lambda: builds(a).get("ready", 0) == 2, what="the eager deltas")
    tokens = [enroll(a, f"dev-{i}") for i in range(8)]
    wait_for(
        lambda: b.get("/v1/device/update?current_version=2", headers=bearer(tokens[0])).json()["version"] == 3,
        what="the second process to see version 3",
    )
    barrier = threading.Barrier(len(tokens))

    def hammer(client: TestClient, token: str) -> None:
        barrier.wait()
        for _ in range(5):
            client.get("/v1/device/update?current_version=1", headers=bearer(token))

    threads = [threading.Thread(target=hammer, args=((a, b)[i % 2], t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    offer_with_delta(a, tokens[0], 1)
    offer_with_delta(b, tokens[1], 1)
    total = builds(a).get("ready", 0) + builds(b).get("ready", 0)
    assert total == 3, (builds(a), builds(b))  # 1→2, 2→3 at publish; 1→3 once, by a or b


def _three_versions_with_a_claim(env: Env, client: TestClient, claimed_by: str, claimed_at: datetime) -> None:
    """v1…v3 published, and the 1 → 3 delta claimed (status pending) by another process."""
    for version in (1, 2, 3):
        release(client, env.artifact(version))
    engine = create_engine(env.database_url)
    try:
        with engine.begin() as conn:
            model_id = conn.execute(select(Delta.model_id)).scalars().first()
            conn.execute(
                insert(Delta).values(
                    model_id=model_id,
                    from_version=1,
                    to_version=3,
                    status="pending",
                    claimed_by=claimed_by,
                    claimed_at=claimed_at,
                )
            )
    finally:
        engine.dispose()


def test_abandoned_claim_is_taken_over(env: Env, client: TestClient) -> None:
    _three_versions_with_a_claim(env, client, "dead-host:1:x", utcnow() - timedelta(hours=1))  # crashed an hour ago
    token = enroll(client, "dev-1")
    assert offer_with_delta(client, token, 1)["delta"]["from_version"] == 1


def test_fresh_claim_by_another_process_is_left_alone(env: Env, client: TestClient) -> None:
    _three_versions_with_a_claim(env, client, "busy-host:1:x", utcnow())
    token = enroll(client, "dev-1")
    for _ in range(5):
        assert client.get("/v1/device/update?current_version=1", headers=bearer(token)).json()["delta"] is None
    detail = client.get("/v1/models/shapes/versions/3", headers=ADMIN).json()
    assert {d["from_version"]: d["status"] for d in detail["deltas"]}[1] == "pending"


def test_delta_is_built_from_the_payload_when_the_onnx_blob_is_gone(env: Env, client: TestClient) -> None:
    v1 = env.artifact(1)
    body = release(client, v1)
    storage = open_storage(env.settings())
    if env.storage == "file":
        sha = body["onnx"]["sha256"]
        (storage.root / sha[:2] / sha).unlink()  # type: ignore[attr-defined]
    else:
        storage._client.delete_object(Bucket=storage.bucket, Key=storage.key(body["onnx"]["sha256"]))  # type: ignore[attr-defined]
    assert not storage.exists(body["onnx"]["sha256"])
    release(client, env.artifact(2))
    token = enroll(client, "dev-1")
    offer = offer_with_delta(client, token, 1)
    rebuilt = A.apply_delta(helpers.onnx_of(v1), download(client, offer["delta"]["url"]).content)
    assert rebuilt == helpers.onnx_of(env.artifact(2))
    assert storage.exists(body["onnx"]["sha256"])  # healed
