"""A small real OTA server for the agent's tests: real HTTP on 127.0.0.1, crafted offers on demand.

It speaks the device half of the wire API (enroll, update, events, blobs with Range) and lets a
test tamper with anything: the offer JSON (`offer_hook`), the bytes served for a blob
(`blob_override`), the pace of a download (`throttle`), the events endpoint's answer
(`events_status`, `events_hook`), any answer at all, headers and streamed body included
(`answer_hook`: the hostile server), and a device's enrollment (`revoke`). Left alone,
it answers like the real server: the same status codes, answer bodies and problem documents
(`test_contract.py` holds it to that); tests that need an honest server use the real one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import artifact as A

from .models import Release

SECRET = "enroll-me"
TOKEN_SECONDS = 30 * 86400  # the real server's default device token lifetime
Answer = tuple[int, dict[str, str], Iterable[bytes]]
STRICT_FIELDS = {"type", "version", "reason", "at", "metrics", "installed_version"}


class FakeServer:
    def __init__(self, *, poll_interval: float = 0.05, port: int = 0) -> None:
        self.poll_interval = poll_interval
        self.port = port
        self.releases: dict[int, Release] = {}
        self.target: int | None = None
        self.target_of: Callable[[str], int | None] | None = None  # per device id (a rollout's cohorts)
        self.forced: Release | None = None  # offered whatever the device runs (downgrade tests)
        self.deltas = True
        self.delta_override: dict[int, bytes] = {}  # from_version → delta bytes to offer instead
        self.blobs: dict[str, bytes] = {}
        self.blob_override: dict[str, bytes] = {}  # sha256 → the bytes actually served
        self.offer_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.throttle = 0.0  # seconds per chunk
        self.chunk = 8192
        self.ignore_range = False
        self.events: list[dict[str, Any]] = []
        self.events_status: int | None = None  # answer every events POST with this status
        self.events_hook: Callable[[list[dict[str, Any]]], int | None] | None = None  # a status for this batch, or None
        # (method, path) → (status, headers, body chunks) sent instead of the real answer, or None: the hostile server
        self.answer_hook: Callable[[str, str], Answer | None] | None = None
        self.reject_types: set[str] = set()  # 422 for a batch holding one of these event types
        self.strict_events = False  # 422 for any field beyond DESIGN.md's, like a server with extra="forbid"
        self.enrollments: list[dict[str, Any]] = []
        self.trust: dict[str, Any] | None = None  # GET /v1/trust's chain; its "tag" goes on every poll answer
        self.tokens: dict[str, str] = {}
        self.devices: dict[str, dict[str, Any]] = {}  # device_id → its status and installed_version
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._deltas: dict[tuple[int, int], bytes] = {}
        self._shas: dict[int, tuple[bytes, str]] = {}

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, release: Release, *, target: bool = True) -> None:
        self.releases[release.version] = release
        self.blobs[release.payload_sha] = release.payload
        if target:
            self.target = release.version

    def _sha(self, data: bytes) -> str:
        """sha256 by object identity: a fleet polls hundreds of times a second."""
        hit = self._shas.get(id(data))
        if hit is None or hit[0] is not data:
            hit = self._shas[id(data)] = (data, hashlib.sha256(data).hexdigest())
        return hit[1]

    def blob_url(self, data: bytes) -> str:
        sha = self._sha(data)
        self.blobs[sha] = data
        return f"/v1/blobs/{sha}"

    def revoke(self, device_id: str) -> None:
        """What an admin's `DELETE /v1/devices/{id}` does: the token is refused from now on (401)."""
        with self._lock:
            self.tokens = {t: d for t, d in self.tokens.items() if d != device_id}
            self.devices.pop(device_id, None)

    def requests_to(self, path: str) -> int:
        return len([r for r in list(self.requests) if urlsplit(r[1]).path == path])

    def events_of(self, type_: str, version: int | None = None) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["type"] == type_ and (version is None or e.get("version") == version)]

    def ranges(self) -> list[str]:
        return [h["range"] for m, p, h in list(self.requests) if p.startswith("/v1/blobs/") and "range" in h]

    # ------------------------------------------------------------------ the offer

    def offer(self, current: int | None, device: str | None = None) -> dict[str, Any] | None:
        release = self.forced
        if release is None:
            target = self.target if self.target_of is None or device is None else self.target_of(device)
            if target is None or (current or 0) >= target:
                return None
            release = self.releases[target]
        delta = None
        if self.deltas and current is not None and (current in self.releases or current in self.delta_override):
            data = self.delta_override.get(current) or self._delta(current, release)
            delta = {
                "from_version": current,
                "url": self.blob_url(data),
                "length": len(data),
                "sha256": self._sha(data),
            }
        manifest = json.loads(release.manifest_bytes)
        offer: dict[str, Any] = {
            "model": manifest["model"],
            "version": release.version,
            "manifest": manifest,
            "signatures": release.signatures,
            "download": {
                "url": self.blob_url(release.payload),
                "length": len(release.payload),
                "sha256": release.payload_sha,
            },
            "delta": delta,
            "poll_interval": self.poll_interval,
        }
        return self.offer_hook(offer) if self.offer_hook is not None else offer

    def _delta(self, current: int, release: Release) -> bytes:
        key = (current, release.version)
        if key not in self._deltas:
            self._deltas[key] = A.make_delta(self.releases[current].onnx, release.onnx)
        return self._deltas[key]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _problem(self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        """An RFC 9457 problem document, as the real server answers every error."""
        data = json.dumps({"type": f"urn:ota:problem:{slug}", "title": title, "status": status, "detail": detail})
        self.send_response(status)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data.encode())

    def _unauthenticated(self) -> None:
        self._problem(401, "unauthenticated", "Authentication required", "unknown or revoked device token")

    def _device(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.fake.tokens.get(auth.removeprefix("Bearer "))

    def _record(self) -> None:
        self.fake.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def _hostile(self) -> bool:
        """Send the `answer_hook`'s answer, if it has one for this request."""
        hook = self.fake.answer_hook
        answer = None if hook is None else hook(self.command, urlsplit(self.path).path)
        if answer is None:
            return False
        status, headers, chunks = answer
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k in headers):
            self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True
        return True

    def do_POST(self) -> None:
        self._record()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")
        if self._hostile():
            return
        path = urlsplit(self.path).path
        if path == "/v1/devices/enroll":
            self._enroll(body)
        elif path == "/v1/device/token":
            self._renew()
        elif path == "/v1/device/events":
            device = self._device()
            if device is None:
                self._unauthenticated()
            elif self.fake.events_status is not None:
                self._problem(self.fake.events_status, "forced", "Forced", "events_status is set")
            elif self.fake.events_hook is not None and (status := self.fake.events_hook(body)) is not None:
                self._problem(status, "forced", "Forced", "events_hook refused this batch")
            elif any(e.get("type") in self.fake.reject_types for e in body) or (
                self.fake.strict_events and any(set(e) - STRICT_FIELDS for e in body)
            ):
                self._problem(422, "invalid-request", "Invalid request", "body: an event this server refuses")
            else:
                with self.fake._lock:
                    self.fake.events.extend({**e, "device_id": device} for e in body)
                    state = self.fake.devices[device]
                    for e in body:  # what the real server folds into the device (fleet.apply_events)
                        if e.get("type") != "metrics":
                            state["status"] = e.get("type")
                            if e.get("type") == "installed":
                                state["installed_version"] = e.get("version")
                        if e.get("installed_version") is not None:
                            state["installed_version"] = e["installed_version"]
                    answer = {"recorded": len(body), **state}
                self._json(200, answer)
        else:
            self._problem(404, "not-found", "Not found", "Not Found")

    def _enroll(self, body: dict[str, Any]) -> None:
        if body.get("enrollment_secret") != SECRET:
            self._problem(403, "enrollment-refused", "Enrollment refused", "the enrollment secret is wrong")
            return
        device_id = body.get("device_id") or f"dev-{secrets.token_hex(4)}"
        with self.fake._lock:
            if device_id in self.fake.devices:
                detail = f"device {device_id!r} is already enrolled; an admin must delete it before it can enroll again"
                self._problem(409, "device-exists", "Device already enrolled", detail)
                return
            token = secrets.token_urlsafe(16)
            self.fake.enrollments.append(body)
            self.fake.tokens[token] = device_id
            self.fake.devices[device_id] = {"status": "enrolled", "installed_version": None}
        interval = self.fake.poll_interval
        answer = {"device_id": device_id, "model": body.get("model"), "poll_interval": interval, **self._lifetime()}
        self._json(201, {**answer, "token": token})

    def _lifetime(self) -> dict[str, Any]:
        expires = int(time.time()) + TOKEN_SECONDS
        return {"expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)), "expires_in": TOKEN_SECONDS}

    def _renew(self) -> None:
        device = self._device()
        if device is None:
            self._unauthenticated()
            return
        token = secrets.token_urlsafe(16)
        with self.fake._lock:
            self.fake.tokens[token] = device  # the old one keeps working until it expires, as on the real server
        self._json(200, {"token": token, **self._lifetime()})

    def do_GET(self) -> None:
        self._record()
        if self._hostile():
            return
        parts = urlsplit(self.path)
        if parts.path == "/v1/device/update":
            if self._device() is None:
                self._unauthenticated()
                return
            current = parse_qs(parts.query).get("current_version", [None])[0]
            offer = self.fake.offer(None if current is None else int(current), self._device())
            chain = self.fake.trust
            trust = {} if chain is None else {"Ota-Trust-Version": chain["tag"]}
            if offer is None:
                self.send_response(204)
                for k, v in trust.items():
                    self.send_header(k, v)
                self.end_headers()
                return
            etag = '"' + hashlib.sha256(json.dumps(offer, sort_keys=True).encode()).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                for k, v in trust.items():
                    self.send_header(k, v)
                self.end_headers()
                return
            self._json(200, offer, {"ETag": etag, **trust})
        elif parts.path == "/v1/trust" and self.fake.trust is not None:
            self._json(200, self.fake.trust)
        elif parts.path.startswith("/v1/blobs/"):
            self._blob(parts.path.removeprefix("/v1/blobs/"))
        else:
            self._problem(404, "not-found", "Not found", "Not Found")

    def _blob(self, sha: str) -> None:
        if self._device() is None:
            self._problem(401, "unauthenticated", "Authentication required", "unknown or revoked token")
            return
        data = self.fake.blob_override.get(sha, self.fake.blobs.get(sha))
        if data is None:
            self._problem(404, "blob-not-found", "Blob not found", f"no blob {sha}")
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and not self.fake.ignore_range:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                detail = f"range starts at byte {start}, past the end of a {len(data)}-byte blob"
                headers = {"Content-Range": f"bytes */{len(data)}"}
                self._problem(416, "range-not-satisfiable", "Range not satisfiable", detail, headers)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        try:
            for i in range(start, len(data), self.fake.chunk):
                self.wfile.write(data[i : i + self.fake.chunk])
                self.wfile.flush()
                if self.fake.throttle:
                    time.sleep(self.fake.throttle)
        except (BrokenPipeError, ConnectionResetError):
            pass
