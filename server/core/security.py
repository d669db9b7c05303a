"""Credentials: admin tokens, device tokens, signed download URLs, secret comparison.

**Admin tokens** are random (``otaa_…``); the bootstrap one comes from ``OTA_ADMIN_TOKEN``, more
are minted by ``ota-server create-token`` and stored as their sha256 only. Every comparison is
between digests with :func:`hmac.compare_digest`.

**Device tokens** (``otad_…``) are *signed* rather than looked up: an HMAC-SHA256 (key derived
from ``OTA_SECRET_KEY``) over the device's immutable identity — its row id, device id, model and a
random token id. The update poll is the hottest path of the server (every device, every few
minutes), and a signed token lets it authenticate without a database round trip; the token is
still never stored (only its token id, which is not a credential). Revocation — a device deleted by
an admin — lists the token id in ``revoked_tokens``; each process reloads that list with its
registry view (:mod:`server.core.view`), and the revoking request waits until every process
must have seen it. Mender's device tokens (JWTs signed by the server) make the same trade.

**Download URLs** for blobs served by this server are signed the same way (sha256 + expiry), so
that, like a presigned S3 URL, they work without the device's ``Authorization`` header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

ADMIN_PREFIX = "otaa_"
DEVICE_PREFIX = "otad_"
_MAC_BYTES = 32


def digest(secret: str) -> str:
    """The form a secret is stored and compared in."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_equals(presented: str, expected: str) -> bool:
    """Constant-time equality of two secrets (compared as digests, so lengths leak nothing)."""
    return hmac.compare_digest(digest(presented), digest(expected))


def new_admin_token() -> str:
    return ADMIN_PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return secrets.token_hex(16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a device token asserts: immutable for the life of the enrollment."""

    pk: int
    device_id: str
    model: str
    token_id: str


class Signer:
    """Purpose-bound HMAC keys derived from ``OTA_SECRET_KEY`` (one secret, separate uses)."""

    def __init__(self, secret_key: str) -> None:
        master = secret_key.encode("utf-8")
        self._device_key = hmac.new(master, b"ota device token v1", hashlib.sha256).digest()
        self._url_key = hmac.new(master, b"ota download url v1", hashlib.sha256).digest()
        self._session_key = hmac.new(master, b"ota dashboard session v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(master, b"ota dashboard csrf v1", hashlib.sha256).digest()

    # -- device tokens -------------------------------------------------------------------------

    def device_token(self, identity: DeviceIdentity) -> str:
        # "/" appears in none of the fields (device ids, model names and token ids exclude it).
        body = f"{identity.pk}/{identity.token_id}/{identity.device_id}/{identity.model}".encode("ascii")
        return f"{DEVICE_PREFIX}{_b64(body)}.{_b64(hmac.digest(self._device_key, body, 'sha256'))}"

    def read_device_token(self, token: str) -> DeviceIdentity | None:
        """The identity a token asserts if its MAC verifies; None for anything else."""
        if not token.startswith(DEVICE_PREFIX) or len(token) > 1024:
            return None
        body_text, _, mac_text = token[len(DEVICE_PREFIX) :].partition(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, hmac.digest(self._device_key, body, "sha256")):
            return None
        pk, token_id, device_id, model = body.decode("ascii").split("/")  # we signed it: well-formed by construction
        return DeviceIdentity(pk=int(pk), device_id=device_id, model=model, token_id=token_id)

    # -- download URLs -------------------------------------------------------------------------

    def url_signature(self, sha256: str, expires: int) -> str:
        mac = hmac.new(self._url_key, f"{sha256}:{expires}".encode("ascii"), hashlib.sha256).digest()
        return _b64(mac[:20])

    def sign_blob_path(self, path: str, sha256: str, *, ttl: int, now: float | None = None) -> str:
        """`path` with `expires` and `sig` query parameters.

        The expiry is rounded up to a window of half the TTL, so every offer within a window carries
        the same URL (cacheable, stable ETags) and each URL stays valid between TTL/2 and TTL.
        """
        window = max(1, ttl // 2)
        moment = int(time.time() if now is None else now)
        expires = (moment // window + 2) * window
        return f"{path}?expires={expires}&sig={self.url_signature(sha256, expires)}"

    def check_blob_signature(self, sha256: str, expires: int, sig: str, *, now: float | None = None) -> bool:
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(sig.encode("ascii", "replace"), self.url_signature(sha256, expires).encode("ascii"))

    # -- dashboard sessions --------------------------------------------------------------------

    def session_cookie(self, admin: str, *, ttl: int, now: float | None = None) -> str:
        """A signed dashboard session: a random id, the admin's name and an expiry (no server-side state)."""
        expires = int(time.time() if now is None else now) + ttl
        body = json.dumps({"sid": secrets.token_hex(16), "admin": admin, "exp": expires}).encode("utf-8")
        return f"{_b64(body)}.{_b64(hmac.digest(self._session_key, body, 'sha256'))}"

    def read_session_cookie(self, cookie: str, *, now: float | None = None) -> DashboardSession | None:
        """The session a cookie names if its MAC verifies and it has not expired; None for anything else."""
        if len(cookie) > 1024:
            return None
        body_text, _, mac_text = cookie.partition(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, hmac.digest(self._session_key, body, "sha256")):
            return None
        data = json.loads(body)  # we signed it: well-formed by construction
        if data["exp"] <= (time.time() if now is None else now):
            return None
        return DashboardSession(sid=data["sid"], admin=data["admin"], expires=data["exp"])

    def csrf_token(self, sid: str) -> str:
        """The token every state-changing dashboard form carries: bound to the session, useless without it."""
        return _b64(hmac.digest(self._csrf_key, sid.encode("ascii"), "sha256"))

    def check_csrf(self, sid: str, token: str) -> bool:
        return hmac.compare_digest(token.encode("ascii", "replace"), self.csrf_token(sid).encode("ascii"))


@dataclass(frozen=True, slots=True)
class DashboardSession:
    sid: str
    admin: str
    expires: int
