"""The local inference endpoint: clear answers for every kind of bad request, 503 before a model exists."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx

from device_agent import InferenceServer

from .conftest import AgentThread
from .fakeserver import FakeServer
from .models import Release, png_bytes


def test_predict_answers_503_problem_json_before_the_first_install(run_agent: Callable[..., AgentThread]) -> None:
    agent = run_agent()
    http = InferenceServer(agent.agent, "127.0.0.1", 0).start()
    try:
        base = "http://{}:{}".format(*http.address)
        r = httpx.post(f"{base}/predict", content=png_bytes())
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert "no model" in r.json()["detail"]
        status = httpx.get(f"{base}/status").json()
        assert status["version"] is None and status["model"] == "shapes" and status["state"]
    finally:
        http.close()


def test_predict_status_and_bad_requests(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    http = InferenceServer(agent.agent, "127.0.0.1", 0).start()
    try:
        base = "http://{}:{}".format(*http.address)
        with httpx.Client(base_url=base) as client:
            for fmt in ("PNG", "JPEG"):
                r = client.post("/predict", content=png_bytes(40, fmt=fmt))
                assert r.status_code == 200, r.text
                body = r.json()
                assert set(body) == {"label", "score", "top_k", "model", "version"}
                assert body["version"] == 1 and len(body["top_k"]) == 3

            r = client.post("/predict", content=b"plain text, not an image")
            assert r.status_code == 415 and "PNG or JPEG" in r.json()["detail"]
            r = client.post("/predict", content=png_bytes(40)[:60])
            assert r.status_code == 400 and "could not be decoded" in r.json()["detail"]
            r = client.post("/predict", content=b"")
            assert r.status_code == 400 and "empty" in r.json()["detail"]
            r = client.post("/predict", content=b"GIF89a" + b"\0" * 40)
            assert r.status_code == 415
            assert client.get("/nope").status_code == 404

            status = client.get("/status").json()
            assert status["version"] == 1 and status["model"] == "shapes" and status["state"] in ("idle", "checking")
            assert status["requests_served"] == 2
        host, port = http.address
        with socket.create_connection((host, port)) as raw:  # a client that announces a 1 GB body
            raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\nxx")
            assert raw.recv(200).startswith(b"HTTP/1.1 413")
    finally:
        http.close()
