"""Operations: probes, metrics, request logs, and errors — problem documents, 503 not 500 when a dependency is down."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.core.security import DeviceIdentity, Signer
from server.observability import JsonFormatter

from .conftest import ADMIN, ENROLLMENT_SECRET, Env, assert_problem, bearer, closed_port, enroll, publish, release


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}{{{re.escape(selector)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    assert client.get("/readyz").json() == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}


def test_metrics_count_polls_offers_bytes_publishes_and_errors(env: Env, client: TestClient) -> None:
    data = env.artifact(1)
    body = release(client, data)
    publish(client, data)
    client.post("/v1/models/shapes/versions", content=b"junk", headers=ADMIN)
    token = enroll(client, "cam-1")
    client.get("/v1/device/update?current_version=0", headers=bearer(token))
    client.get("/v1/device/update?current_version=1", headers=bearer(token))
    client.get("/v1/models", headers=bearer(token))
    assert metric(client, "ota_publishes_total", result="created") == 1
    assert metric(client, "ota_publishes_total", result="unchanged") == 1
    assert metric(client, "ota_publishes_total", result="rejected") == 1
    assert metric(client, "ota_polls_total", answer="update") == 1
    assert metric(client, "ota_polls_total", answer="current") == 1
    assert metric(client, "ota_offers_total", kind="full") == 1
    assert metric(client, "ota_offer_bytes_total", kind="full") == body["payload"]["length"]
    assert metric(client, "ota_errors_total", status="403", type="forbidden") == 1
    assert metric(client, "ota_errors_total", status="422", type="invalid-artifact") == 1
    assert (
        metric(client, "ota_http_requests_total", method="GET", route="/v1/device/update", status="204") == 1
    )  # counted by route template, not by raw path


def test_one_json_log_line_per_request_with_the_device(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    token = enroll(client, "cam-9")
    with caplog.at_level(logging.INFO, logger="ota.access"):
        client.get("/v1/device/update?current_version=0", headers=bearer(token))
        client.app.state.services.access.flush()  # type: ignore[attr-defined]  # written in batches
    (record,) = [r for r in caplog.records if r.name == "ota.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "request"
    assert (line["method"], line["path"], line["status"], line["device_id"]) == (
        "GET",
        "/v1/device/update",
        204,
        "cam-9",
    )
    assert line["duration_ms"] >= 0 and "current_version" not in json.dumps(line)


def test_access_lines_are_written_as_json_in_batches(client: TestClient) -> None:
    import io

    from server.observability import JsonLinesHandler

    stream = io.StringIO()
    handler = JsonLinesHandler(stream)
    logger = logging.getLogger("ota.access")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(logger, "level", logging.INFO)
            for _ in range(3):
                client.get("/healthz")
            assert stream.getvalue() == ""  # not yet: batched
            client.app.state.services.access.flush()  # type: ignore[attr-defined]
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["logger"], x["path"], x["status"]) for x in lines] == [("ota.access", "/healthz", 200)] * 3


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "not-found")
    assert_problem(client.put("/healthz"), 405, "method-not-allowed")


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post("/v1/devices/enroll", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_problem(r, 422, "invalid-request")


def test_oversize_json_body_is_413(env: Env) -> None:
    client = env.client(max_request_bytes=2048)
    r = client.post("/v1/devices/enroll", json={"enrollment_secret": "x" * 5000, "model": "shapes"})
    assert_problem(r, 413, "payload-too-large")


def _down_database_url(env: Env, tmp_path: Path) -> str:
    if env.database == "sqlite":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        return f"sqlite:///{blocker}/ota.db"
    with closed_port() as port:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"


def test_database_down_gives_503_with_retry_after_never_500(env: Env, tmp_path: Path) -> None:
    client = env.client(database_url=_down_database_url(env, tmp_path))
    device_token = Signer(env.base["secret_key"]).device_token(DeviceIdentity(1, "cam-1", "shapes", "0" * 32))
    checks = [
        client.get("/v1/models", headers=ADMIN),
        client.get("/v1/devices", headers=ADMIN),
        client.post("/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes"}),
        client.post("/v1/models/shapes/versions", content=env.artifact(1), headers=ADMIN),
        client.get("/v1/device/update?current_version=1", headers=bearer(device_token)),
    ]
    for r in checks:
        doc = assert_problem(r, 503) if r.status_code == 503 else None
        assert doc is not None, (r.request.url, r.status_code, r.text)
        assert int(r.headers["retry-after"]) > 0
    ready = client.get("/readyz")
    assert_problem(ready, 503, "not-ready")
    assert ready.json()["checks"]["storage"] == "ok"
    assert client.get("/healthz").status_code == 200


def test_storage_down_gives_503_on_publish_and_download(env: Env, tmp_path: Path) -> None:
    if env.storage == "file":
        blocker = tmp_path / "blobs-are-a-file"
        blocker.write_text("")
        client = env.client(storage_url=f"file://{blocker}/sub")
    else:
        with closed_port() as port:
            client = env.client(s3_endpoint_url=f"http://127.0.0.1:{port}")
    r = client.post("/v1/models/shapes/versions", content=env.artifact(1), headers=ADMIN)
    assert_problem(r, 503, "storage-unavailable")
    assert int(r.headers["retry-after"]) > 0
    assert client.get("/v1/models", headers=ADMIN).json() == []  # nothing half-published
    assert_problem(client.get(f"/v1/blobs/{'a' * 64}", headers=ADMIN), 503, "storage-unavailable")
    ready = client.get("/readyz")
    assert_problem(ready, 503, "not-ready")
    assert ready.json()["checks"]["database"] == "ok"


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/models/{model}/versions",
        "/v1/models/{model}/versions/{version}/revoke",
        "/v1/devices",
        "/v1/devices/enroll",
        "/v1/device/update",
        "/v1/device/events",
        "/v1/fleet",
        "/v1/blobs/{sha256}",
        "/v1/trust",
        "/v1/trust/root",
        "/v1/trust/keys",
        "/readyz",
    ):
        assert path in paths, path
    assert client.get("/docs").status_code == 200
