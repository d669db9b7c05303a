"""`--serve HOST:PORT`: the local inference endpoint, on the standard library's threading HTTP server.

    POST /predict   body: the image file's bytes (PNG or JPEG) → 200 {"label", "score", "top_k", "model", "version"}
                    503 before any model is installed, 415 not PNG/JPEG, 400 undecodable, 413 too large
    GET  /status    {"model", "version", "state", ...}
    GET  /healthz   {"ok": true}

Errors are RFC 9457 problem+json, like the server's. HTTP/1.1 keep-alive, one thread per
connection: an inference runs outside the GIL, so concurrent requests overlap in ONNX Runtime.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .errors import InferenceError, PayloadTooLargeError

log = logging.getLogger(__name__)
MAX_BODY = 20 * 1024 * 1024


class Predictor(Protocol):
    def predict(self, image: bytes) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:8080` or `:8080` (loopback) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = "ota-device-agent"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms
    predictor: Predictor  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any], content_type: str = "application/json") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "5")
        self.end_headers()
        self.wfile.write(data)

    def _problem(self, status: int, detail: str) -> None:
        body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
        self._send(status, body, "application/problem+json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/status":
            self._send(200, self.predictor.status())
        elif path == "/healthz":
            self._send(200, {"ok": True})
        else:
            self._problem(404, f"no such endpoint: GET {path} (try POST /predict or GET /status)")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        length_header = self.headers.get("Content-Length")
        if path != "/predict":
            self.close_connection = True
            self._problem(404, f"no such endpoint: POST {path} (try POST /predict)")
            return
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._problem(411, "send the image with a Content-Length header")
            return
        length = int(length_header)
        if length > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._problem(413, str(PayloadTooLargeError(f"the image is {length} bytes; at most {MAX_BODY}")))
            return
        body = self.rfile.read(length)
        try:
            answer = self.predictor.predict(body)
        except InferenceError as e:
            self._problem(e.status, str(e))
            return
        except Exception:  # a request-level guard: answer 500 and keep serving (nothing is being checked here)
            log.exception("/predict failed")
            self._problem(500, "inference failed; see the agent's log")
            return
        self._send(200, answer)


class InferenceServer:
    """A ThreadingHTTPServer on its own thread; `close()` stops it and frees the port."""

    def __init__(self, predictor: Predictor, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"predictor": predictor})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="inference-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> InferenceServer:
        self._thread.start()
        log.info("serving /predict and /status on http://%s:%d", *self.address)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
