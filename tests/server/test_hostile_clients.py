"""Hostile clients and what the server shows them: forged Host headers, strangers' bodies, other
models' blobs, a crash in a route, the docs page, security headers, the probes and the metrics.

Each test is named after the threat (issue 12, findings 19, 20, 21 and 25); docs/security.md lists them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from server.config import load_settings
from server.errors import ConfigurationError
from server.observability import JsonLinesHandler

from . import helpers
from .conftest import ADMIN, Env, assert_problem, bearer, enroll, publish, release

SQLITE = pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)
EVIL = "evil.example"


# -- 19: the Host header never reaches a signed download URL -----------------------------------


@SQLITE
def test_forged_host_header_does_not_reach_signed_download_urls(env: Env) -> None:
    client = env.client(public_url="https://ota.example.com")
    release(client, env.artifact(1))
    token = enroll(client, "cam-1")
    r = client.get("/v1/device/update?current_version=0", headers={**bearer(token), "Host": EVIL})
    assert r.status_code == 200, r.text
    assert r.json()["download"]["url"].startswith("https://ota.example.com/v1/blobs/")
    assert EVIL not in r.text


@SQLITE
def test_untrusted_host_header_is_refused_with_a_problem(env: Env) -> None:
    client = env.client(trusted_hosts=["ota.example.com", "*.fleet.example.com"])
    assert_problem(client.get("/healthz", headers={"Host": EVIL}), 400, "untrusted-host")
    assert client.get("/healthz", headers={"Host": "ota.example.com:8443"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "eu.fleet.example.com"}).status_code == 200


@SQLITE
def test_trailing_slash_redirect_cannot_point_at_a_forged_host(env: Env) -> None:
    client = env.client()
    r = client.get("/v1/models/", headers={**ADMIN, "Host": EVIL}, follow_redirects=False)
    assert EVIL not in r.headers.get("location", "")
    assert_problem(r, 404)


def test_production_without_a_public_url_or_trusted_hosts_refuses_to_start(tmp_path: Path) -> None:
    strong = {
        "env": "production",
        "publisher_keys": [tmp_path / "k.pem"],
        "admin_token": "a" * 12 + "-admin-0123456789abcdef",
        "enrollment_secret": "e" * 12 + "-enroll-0123456789abcdef",
        "secret_key": "s" * 12 + "-secret-0123456789abcdef",
        "metrics_token": "m" * 12 + "-metrics-0123456789abcdef",
    }
    with pytest.raises(ConfigurationError, match="OTA_PUBLIC_URL"):
        load_settings(**strong)
    assert load_settings(**strong, public_url="https://ota.example.com").public_url
    assert load_settings(**strong, trusted_hosts="ota.example.com, *.ota.example.com").trusted_hosts == [
        "ota.example.com",
        "*.ota.example.com",
    ]


# -- 20: a stranger's body is never read --------------------------------------------------------


@SQLITE
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/device/events", {}),
        ("POST", "/v1/device/events", {"Authorization": "Bearer otad_forged.token"}),
        ("POST", "/v1/rollouts", {}),
        ("POST", "/v1/models/shapes/versions/1/revoke", {}),
    ],
)
def test_unauthenticated_body_is_refused_before_it_is_parsed(
    env: Env, method: str, path: str, headers: dict[str, str]
) -> None:
    client = env.client()
    r = client.request(method, path, content=b'{"not": json', headers={**headers, "Content-Type": "application/json"})
    assert_problem(r, 401, "unauthenticated")


@SQLITE
def test_device_token_on_an_admin_route_with_a_body_is_403_not_422(env: Env) -> None:
    client = env.client()
    token = enroll(client, "cam-1")
    r = client.post("/v1/rollouts", content=b"[[[", headers={**bearer(token), "Content-Type": "application/json"})
    assert_problem(r, 403, "forbidden")


# -- 21: a device token reads only its own model's blobs ----------------------------------------


@pytest.fixture()
def two_models(env: Env) -> Iterator[tuple[TestClient, dict[str, object], dict[str, object]]]:
    client = env.client()
    mine = release(client, env.artifact(1))
    theirs = publish(client, env.artifact(1, model="other", onnx_bytes=helpers.tiny_classifier(5)), model="other")
    yield client, mine, theirs


@SQLITE
def test_device_token_cannot_read_another_models_blobs(
    two_models: tuple[TestClient, dict[str, object], dict[str, object]],
) -> None:
    client, mine, theirs = two_models
    device = bearer(enroll(client, "cam-1"))
    own_sha = mine["payload"]["sha256"]  # type: ignore[index]
    other_sha = theirs["payload"]["sha256"]  # type: ignore[index]
    assert client.get(f"/v1/blobs/{own_sha}", headers=device).status_code == 200
    assert_problem(client.get(f"/v1/blobs/{other_sha}", headers=device), 404, "blob-not-found")
    assert client.head(f"/v1/blobs/{other_sha}", headers=device).status_code == 404
    # the same answer as for a blob that does not exist: a token cannot probe what else is stored
    assert_problem(client.get(f"/v1/blobs/{'0' * 64}", headers=device), 404, "blob-not-found")
    assert client.get(f"/v1/blobs/{other_sha}", headers=ADMIN).status_code == 200


# -- 25: one JSON line per crash, offline docs, security headers, quiet probes, metrics token ---


@SQLITE
def test_unexpected_error_is_logged_once_as_one_json_line_and_answered_500(env: Env) -> None:
    app = env.client().app

    async def explode() -> None:
        raise RuntimeError("boom\nsecond line of the message")

    app.router.add_api_route("/explode", explode)  # type: ignore[attr-defined]
    stream = io.StringIO()
    handler = JsonLinesHandler(stream)
    errors = logging.getLogger("ota.errors")
    errors.addHandler(handler)
    try:

        async def call() -> httpx.Response:
            # ASGITransport re-raises whatever escapes the app: what an ASGI server logs a second time
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                return await c.get("/explode")

        r = asyncio.run(call())
    finally:
        errors.removeHandler(handler)
    doc = assert_problem(r, 500, "internal-error")
    assert "boom" not in json.dumps(doc)  # nothing of the exception leaks to the client
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "error" and entry["path"] == "/explode"
    assert "RuntimeError: boom" in entry["exc"] and "Traceback" in entry["exc"]


@SQLITE
def test_docs_page_loads_nothing_from_a_cdn(env: Env) -> None:
    client = env.client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/docs/assets/") for ref in refs), refs
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200 and asset.content, ref
    assert "/openapi.json" in client.get("/docs/assets/init.js").text
    assert_problem(client.get("/docs/assets/..%2F..%2F__init__.py"), 404)
    assert client.get("/redoc").status_code == 404


@SQLITE
@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/docs", "/openapi.json", "/v1/device/update", "/v1/models", "/nowhere"]
)
def test_every_response_carries_security_headers(env: Env, path: str) -> None:
    r = env.client().get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


@SQLITE
def test_readyz_does_not_reveal_the_blob_directory(env: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the blob directory should be")
    client = env.client(storage_url=f"file://{blocker / 'blobs'}")
    r = client.get("/readyz")
    doc = assert_problem(r, 503, "not-ready")
    assert doc["checks"]["storage"].startswith("blob directory unusable")
    assert str(tmp_path) not in r.text


@SQLITE
def test_metrics_need_the_metrics_token_when_one_is_set(env: Env) -> None:
    token = "m" * 12 + "-metrics-0123456789abcdef"
    client = env.client(metrics_token=token)
    assert_problem(client.get("/metrics"), 401, "unauthenticated")
    assert_problem(client.get("/metrics", headers=ADMIN), 401, "unauthenticated")
    r = client.get("/metrics", headers=bearer(token))
    assert r.status_code == 200 and "ota_http_requests_total" in r.text


def test_production_refuses_to_start_with_public_metrics(tmp_path: Path) -> None:
    strong = {
        "env": "production",
        "publisher_keys": [tmp_path / "k.pem"],
        "public_url": "https://ota.example.com",
        "admin_token": "a" * 12 + "-admin-0123456789abcdef",
        "enrollment_secret": "e" * 12 + "-enroll-0123456789abcdef",
        "secret_key": "s" * 12 + "-secret-0123456789abcdef",
    }
    with pytest.raises(ConfigurationError, match="OTA_METRICS_TOKEN is empty"):
        load_settings(**strong)
    with pytest.raises(ConfigurationError, match="OTA_METRICS_TOKEN is shorter"):
        load_settings(**strong, metrics_token="short")
