"""The wire API as the device sees it (DESIGN.md, "Wire API"): every path, header and JSON shape.

Nothing else in the agent knows a URL path or a status code. httpx's exceptions are translated
here, at this one boundary, into :mod:`device_agent.errors` (STYLE.md 3), and the server's JSON is
parsed into typed objects, so that a change in the server's answers is a change in this file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import json
import math
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

import artifact as A

from .errors import AuthError, EnrollmentError, NetworkError, ProtocolError, RejectedError, ServerBusyError

ENROLL_PATH = "/v1/devices/enroll"
UPDATE_PATH = "/v1/device/update"
EVENTS_PATH = "/v1/device/events"
TRUST_PATH = "/v1/trust"
TRUST_VERSION_HEADER = "ota-trust-version"  # on poll answers: the tag of the server's trust chain
MAX_TRUST_ANSWER_BYTES = 2 * 1024 * 1024  # up to 64 roots and a keys document (artifact.trust bounds each)
TOKEN_PATH = "/v1/device/token"
TOKEN_LIFETIME_BOUNDS = (60.0, 10 * 365 * 86_400.0)  # a lifetime outside these is clamped
MAX_ANSWER_BYTES = 256 * 1024  # poll, enroll and events answers: a manifest is < 64 KB
POLL_INTERVAL_BOUNDS = (1.0, 86_400.0)  # what a server may ask: at most once a second, at least once a day
EVENT_TYPES = ("checking", "downloading", "verified", "installed", "failed", "rolled_back", "metrics")


@dataclass(frozen=True)
class BlobRef:
    """Where to fetch bytes, and how many the offer promises (unsigned: bounded by the signed manifest)."""

    url: str
    length: int
    sha256: str


@dataclass(frozen=True)
class DeltaRef(BlobRef):
    from_version: int


@dataclass(frozen=True)
class Offer:
    """A 200 answer of `GET /v1/device/update`. `manifest_bytes` are the exact bytes the signatures cover."""

    model: str
    version: int
    manifest_bytes: bytes
    signatures: tuple[dict[str, str], ...]
    download: BlobRef
    delta: DeltaRef | None
    poll_interval: float | None
    etag: str | None

    def to_json(self) -> dict[str, Any]:
        """For the persisted state: an offer being installed must survive a restart."""
        return {
            "model": self.model,
            "version": self.version,
            "manifest_b64": base64.b64encode(self.manifest_bytes).decode(),
            "signatures": list(self.signatures),
            "download": asdict(self.download),
            "delta": None if self.delta is None else asdict(self.delta),
            "poll_interval": self.poll_interval,
            "etag": self.etag,
        }

    @classmethod
    def from_json(cls, value: Any) -> Offer:
        return parse_offer(value, etag=value.get("etag") if isinstance(value, dict) else None)


@dataclass(frozen=True)
class Credentials:
    device_id: str
    token: str
    expires_in: float | None = None  # seconds the token lives from when it was received; None: the server said not


def token_lifetime(value: Any) -> float | None:
    """The server's `expires_in`, clamped to :data:`TOKEN_LIFETIME_BOUNDS`; None for anything that is not
    a positive number (an older server sends none: its tokens never expire)."""
    return _clamped(value, TOKEN_LIFETIME_BOUNDS)


def _token_answer(data: Any, what: str) -> tuple[str, float | None]:
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data["token"]:
        raise ProtocolError(f"{what}: the answer carries no token")
    if len(data["token"]) > 1024 or not data["token"].isascii() or not data["token"].isprintable():
        raise ProtocolError(f"{what}: the token is not one a server issues")
    return data["token"], token_lifetime(data.get("expires_in"))


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ProtocolError(f"offer field {what} must be an integer >= {minimum}, got {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"offer field {what} must be a non-empty string, got {value!r}")
    return value


def _blob(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"offer field {what} must be an object")
    return {
        "url": _str(value.get("url"), f"{what}.url"),
        "length": _int(value.get("length"), f"{what}.length", 1),
        "sha256": _str(value.get("sha256"), f"{what}.sha256").lower(),
    }


def parse_offer(body: Any, *, etag: str | None) -> Offer:
    """Parse an offer; anything malformed is a :class:`ProtocolError` (nothing signed was judged yet).

    The signed bytes are `manifest_b64` when the server sends it (the exact uploaded bytes), else
    the canonical encoding of the `manifest` object, which is the same bytes for a canonical manifest.
    """
    if not isinstance(body, dict):
        raise ProtocolError("offer must be a JSON object")
    if isinstance(body.get("manifest_b64"), str):
        try:
            manifest_bytes = base64.b64decode(body["manifest_b64"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ProtocolError(f"offer field manifest_b64 is not base64: {e}") from e
    elif isinstance(body.get("manifest"), dict):
        try:
            manifest_bytes = A.canonical_json(body["manifest"])
        except A.ManifestError as e:
            raise ProtocolError(f"offer field manifest cannot be encoded: {e}") from e
    else:
        raise ProtocolError("offer carries no manifest")
    sigs = body.get("signatures")
    if not isinstance(sigs, list) or not all(isinstance(s, dict) for s in sigs):
        raise ProtocolError("offer field signatures must be a list of objects")
    delta = body.get("delta")
    interval = poll_interval(body.get("poll_interval"))
    return Offer(
        model=_str(body.get("model"), "model"),
        version=_int(body.get("version"), "version", 1),
        manifest_bytes=manifest_bytes,
        signatures=tuple(sigs),
        download=BlobRef(**_blob(body.get("download"), "download")),
        delta=None
        if delta is None
        else DeltaRef(**_blob(delta, "delta"), from_version=_int(delta.get("from_version"), "delta.from_version", 1)),
        poll_interval=interval,
        etag=etag,
    )


def poll_interval(value: Any) -> float | None:
    """The server's `poll_interval`, clamped to :data:`POLL_INTERVAL_BOUNDS` (Infinity would mean
    never again); None (keep the one in use) for anything that is not a positive number (NaN would
    poll without pause). Neither may reach the persisted record."""
    return _clamped(value, POLL_INTERVAL_BOUNDS)


def _clamped(value: Any, bounds: tuple[float, float]) -> float | None:
    """A JSON number of seconds within `bounds` (Infinity is the upper bound); None if not a positive number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer of a thousand digits
        seconds = math.inf
    if math.isnan(seconds) or seconds <= 0:
        return None
    low, high = bounds
    return min(max(seconds, low), high)


def now_rfc3339() -> str:
    """UTC with a `Z` and milliseconds: events from one agent sort by time."""
    return A.format_time(datetime.now(UTC), milliseconds=True)


def make_event(
    type_: str, version: int | None, *, reason: str | None = None, detail: str | None = None, **fields: Any
) -> dict[str, Any]:
    """One entry of `POST /v1/device/events`; `detail` is the human message behind `reason`."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    event: dict[str, Any] = {"type": type_, "version": version, "at": now_rfc3339()}
    if reason is not None:
        event["reason"] = reason
    if detail is not None:
        event["detail"] = detail[:1000]
    event.update(fields)
    return event


METRIC_FIELDS = ("p50_ms", "p95_ms", "mean_confidence", "requests")


def wire_event(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The event as the server takes it. A `metrics` event carries its numbers in a `metrics`
    object; agents before 0.2 queued them as top-level fields, and such events may still wait on a
    device's disk after an upgrade, so they are nested here rather than refused by the server."""
    if event.get("type") != "metrics" or "metrics" in event:
        return event
    flat = {k: event[k] for k in METRIC_FIELDS if k in event}
    if not flat:
        return event
    rest = {k: v for k, v in event.items() if k not in METRIC_FIELDS}
    return {**rest, "metrics": flat}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _json(data: bytes, what: str) -> Any:
    """Parse an answer; unreadable or absurdly nested JSON is a :class:`ProtocolError`, never a crash."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{what}: answer is not JSON: {type(e).__name__}") from e


def _detail(body: bytes | None) -> str:
    """The `detail` of a problem+json answer, else the start of the body (none for a streamed download)."""
    if not body:
        return ""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(value, dict) and isinstance(value.get("detail"), str):
        return str(value["detail"])[:1000]
    return str(value)[:200]


def _raise_for_status(response: httpx.Response, what: str, body: bytes | None = None) -> None:
    code = response.status_code
    if code < 400:
        return
    message = f"{what}: HTTP {code} {_detail(body)}".rstrip()
    if code in (401, 403):
        raise AuthError(message)
    if code == 429 or code >= 500:
        raise ServerBusyError(message, retry_after=_retry_after(response), status=code)
    raise ProtocolError(message, status=code)


async def _read_capped(response: httpx.Response, what: str, cap: int = MAX_ANSWER_BYTES) -> bytes:
    """The raw body, refused past `cap` bytes while it streams in (a hostile server cannot exhaust memory).

    Compressed answers are refused, as httpx would inflate them behind the cap's back."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(f"{what}: unexpected Content-Encoding {encoding!r}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ProtocolError(f"{what}: answer of {declared} bytes is above the {cap}-byte cap")
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) > cap:
            raise ProtocolError(f"{what}: answer is above the {cap}-byte cap; dropped")
    return bytes(data)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """httpx's exceptions become the agent's own, here and nowhere else."""
    try:
        yield
    except httpx.TransportError as e:
        raise NetworkError(f"{what}: {type(e).__name__}: {e}") from e
    except (httpx.DecodingError, httpx.TooManyRedirects, httpx.InvalidURL) as e:
        raise ProtocolError(f"{what}: {e}") from e


@dataclass
class BlobResponse:
    """An open download: `start` is where the body begins (0 when the server ignored our Range)."""

    status: int
    start: int
    content_length: int | None
    total: int | None  # the blob's whole length, when a 206's Content-Range names it
    chunks: AsyncIterator[bytes]


class ServerClient:
    """One device's view of the server. Many may share one `httpx.AsyncClient` (the simulator).

    `gate` bounds the requests a fleet has inside httpx at once: httpcore's pool does work for every
    waiting request on every change, so a thousand queued requests would cost the loop quadratic time.
    """

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, token: str | None = None, gate: asyncio.Semaphore | None = None
    ) -> None:
        self.http = http
        self._gate: contextlib.AbstractAsyncContextManager[Any] = gate or contextlib.nullcontext()
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.trust_version: str | None = None  # the poll's Ota-Trust-Version: the server's chain tag
        origin = urlsplit(self.base_url)
        self._origin = (origin.scheme, origin.netloc)

    def _auth(self, url: str) -> dict[str, str]:
        """The bearer token goes to our server only, never to a presigned object-storage host."""
        parts = urlsplit(url)
        if self.token and (parts.scheme, parts.netloc) == self._origin:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def url(self, path_or_url: str) -> str:
        return urljoin(self.base_url, path_or_url)

    async def _exchange(
        self,
        what: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        cap: int = MAX_ANSWER_BYTES,
        **kwargs: Any,
    ) -> tuple[httpx.Response, bytes]:
        """One request whose answer is read whole, but never more than `cap` bytes."""
        sent = {"Accept-Encoding": "identity", **(headers or {})}
        with _translated(what):
            async with self._gate, self.http.stream(method, self.url(url), headers=sent, **kwargs) as response:
                return response, await _read_capped(response, what, cap)

    async def enroll(
        self,
        *,
        secret: str,
        model: str,
        device_id: str | None,
        labels: Mapping[str, str],
        previous_token: str | None = None,
    ) -> Credentials:
        """Enroll; `previous_token` (the one the server refused) lets an enrolled device enroll again."""
        body: dict[str, Any] = {"enrollment_secret": secret, "model": model}
        if device_id:
            body["device_id"] = device_id
        if labels:
            body["labels"] = dict(labels)
        if previous_token:
            body["previous_token"] = previous_token
        response, answer = await self._exchange("enroll", "POST", ENROLL_PATH, json=body)
        if response.status_code in (429,) or response.status_code >= 500:
            _raise_for_status(response, "enroll", answer)
        if response.status_code not in (200, 201):
            raise EnrollmentError(f"enrollment refused: HTTP {response.status_code} {_detail(answer)}")
        data = _json(answer, "enroll")
        if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data.get("device_id"):
            raise ProtocolError("enroll: the answer carries no device_id and token")
        token, lifetime = _token_answer(data, "enroll")
        creds = Credentials(device_id=str(data["device_id"])[:200], token=token, expires_in=lifetime)
        self.token = creds.token
        return creds

    async def renew_token(self) -> tuple[str, float | None]:
        """A fresh token for this device (and its lifetime), asked for with the current one."""
        response, answer = await self._exchange("renew token", "POST", TOKEN_PATH, headers=self._auth(self.base_url))
        _raise_for_status(response, "renew token", answer)
        if response.status_code != 200:
            raise ProtocolError(f"renew token: unexpected HTTP {response.status_code}", status=response.status_code)
        token, lifetime = _token_answer(_json(answer, "renew token"), "renew token")
        self.token = token
        return token, lifetime

    async def poll(self, current_version: int | None, etag: str | None) -> Offer | None:
        """The offer, or None (204 nothing new, 304 the offer named by `etag` is unchanged)."""
        params = {} if current_version is None else {"current_version": str(current_version)}
        headers = self._auth(self.base_url)
        if etag:
            headers["If-None-Match"] = etag
        response, answer = await self._exchange("poll", "GET", UPDATE_PATH, params=params, headers=headers)
        tag = response.headers.get(TRUST_VERSION_HEADER)
        self.trust_version = tag[:64] if tag else None
        if response.status_code in (204, 304):
            return None
        _raise_for_status(response, "poll", answer)
        if response.status_code != 200:
            raise ProtocolError(f"poll: unexpected HTTP {response.status_code}", status=response.status_code)
        return parse_offer(_json(answer, "poll"), etag=response.headers.get("etag"))

    async def trust_chain(self) -> Any:
        """`GET /v1/trust`: the chain as JSON, unverified (:class:`artifact.TrustState` judges it)."""
        response, answer = await self._exchange(
            "trust", "GET", TRUST_PATH, headers=self._auth(self.base_url), cap=MAX_TRUST_ANSWER_BYTES
        )
        _raise_for_status(response, "trust", answer)
        if response.status_code != 200:
            raise ProtocolError(f"trust: unexpected HTTP {response.status_code}", status=response.status_code)
        return _json(answer, "trust")

    async def post_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        body = [wire_event(e) for e in events]
        response, answer = await self._exchange(
            "events", "POST", EVENTS_PATH, json=body, headers=self._auth(self.base_url)
        )
        if response.status_code in (400, 413, 422):
            raise RejectedError(f"events refused: HTTP {response.status_code} {_detail(answer)}")
        _raise_for_status(response, "events", answer)

    @asynccontextmanager
    async def open_blob(self, url: str, start: int) -> AsyncIterator[BlobResponse]:
        """GET a blob from `start` (HTTP Range). Content-Encoding is refused so that bytes are bytes."""
        full = self.url(url)
        headers = {"Accept-Encoding": "identity", **self._auth(full)}
        if start:
            headers["Range"] = f"bytes={start}-"
        with _translated(f"download {urlsplit(full).path}"):
            async with self._gate, self.http.stream("GET", full, headers=headers) as response:
                yield self._blob_response(response, start)

    def _blob_response(self, response: httpx.Response, start: int) -> BlobResponse:
        code = response.status_code
        if code in (401, 403, 404, 410):  # an expired presigned URL or a vanished blob: poll again for a fresh one
            raise ProtocolError(f"download: HTTP {code}; will ask the server for a fresh URL", status=code)
        if code == 416:  # the partial file is longer than the blob: the caller restarts from zero
            return BlobResponse(code, 0, None, None, _no_chunks())
        _raise_for_status(response, "download")
        if response.headers.get("content-encoding", "identity") != "identity":
            raise ProtocolError(f"download: unexpected Content-Encoding {response.headers['content-encoding']}")
        length = response.headers.get("content-length")
        content_length = int(length) if length is not None and length.isdigit() else None
        total = None
        if code == 206:
            first, last, total = _content_range(response.headers.get("content-range", ""))
            if first != start:
                raise ProtocolError(f"download: asked for bytes from {start}, got Content-Range from {first}")
            if content_length is not None and content_length != last - first + 1:
                raise ProtocolError(
                    f"download: Content-Length {content_length} does not match Content-Range {first}-{last}"
                )
        elif code != 200:
            raise ProtocolError(f"download: unexpected HTTP {code}")
        return BlobResponse(code, start if code == 206 else 0, content_length, total, response.aiter_bytes())


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover (makes this an async generator)


def _content_range(value: str) -> tuple[int, int, int | None]:
    """`bytes first-last/total` (total may be `*`) → (first, last, total); anything else is a ProtocolError."""
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit()) or not (total == "*" or total.isdigit()):
        raise ProtocolError(f"download: malformed Content-Range {value!r}")
    if int(last) < int(first) or (total != "*" and int(last) >= int(total)):
        raise ProtocolError(f"download: inconsistent Content-Range {value!r}")
    return int(first), int(last), None if total == "*" else int(total)
