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

**Rotation.** ``OTA_SECRET_KEY`` is the *current* key: everything new is signed with it. Keys in
``OTA_PREVIOUS_SECRET_KEYS`` each carry a retirement moment: until then what they signed still
verifies, afterwards it is refused with a detail that says the key was retired. Each key has a
public *key id* (``kid``, 8 hex digits of an HMAC of the key: it reveals nothing of the key) that
every new token, URL and session cookie names, so verifying costs one HMAC. Credentials issued
before key ids existed name none; those are tried against each configured key (a bounded trial:
the current key and the few previous ones). Device tokens carry an expiry too (``exp``, signed):
the agent renews its token (``POST /v1/device/token``) before then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

ADMIN_PREFIX = "otaa_"
DEVICE_PREFIX = "otad_"
_MAC_BYTES = 32
_TOKEN_FORMAT = "2"  # device token body: 2/kid/exp/pk/token_id/device_id/model (legacy: pk/token_id/device_id/model)


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
    expires: int | None = None  # Unix time the token stops working; None: a token issued before expiries
    kid: str | None = None  # the key that signed it (set when a token is read)


def key_id(secret_key: str) -> str:
    """The public name of a secret key: 8 hex digits of an HMAC under it (reveals nothing of the key)."""
    return hmac.new(secret_key.encode("utf-8"), b"ota key id v1", hashlib.sha256).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class _Key:
    """Purpose-bound HMAC keys derived from one secret key (one secret, separate uses)."""

    kid: str
    retires_at: datetime | None  # None: the current key
    device: bytes
    url: bytes
    session: bytes
    csrf: bytes

    @classmethod
    def derive(cls, secret_key: str, retires_at: datetime | None) -> _Key:
        master = secret_key.encode("utf-8")

        def sub(purpose: bytes) -> bytes:
            return hmac.new(master, purpose, hashlib.sha256).digest()

        return cls(
            kid=key_id(secret_key),
            retires_at=retires_at,
            device=sub(b"ota device token v1"),
            url=sub(b"ota download url v1"),
            session=sub(b"ota dashboard session v1"),
            csrf=sub(b"ota dashboard csrf v1"),
        )

    def retired(self, now: float) -> bool:
        return self.retires_at is not None and self.retires_at.timestamp() <= now


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def format_moment(moment: datetime | float) -> str:
    """RFC 3339 UTC with a `Z`, second precision: how a retirement or expiry is named in a problem."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Signer:
    """Signs with the current key (``OTA_SECRET_KEY``); verifies with it and with previous keys until they retire.

    `previous` is ``(secret key, retirement moment)`` pairs (``OTA_PREVIOUS_SECRET_KEYS``). A key
    whose moment has passed is kept only to recognise what it signed, so that the refusal can say
    "retired" instead of "unknown".
    """

    def __init__(self, secret_key: str, previous: Sequence[tuple[str, datetime]] = ()) -> None:
        self._current = _Key.derive(secret_key, None)
        self._order = [self._current, *(_Key.derive(k, until) for k, until in previous)]
        self._keys = {k.kid: k for k in reversed(self._order)}  # the current key wins a (2^-32) kid clash

    @property
    def kid(self) -> str:
        """The current key's id: what everything signed from now on names."""
        return self._current.kid

    def retired_at(self, kid: str | None, *, now: float | None = None) -> datetime | None:
        """When the key named `kid` was retired, if it has been; None for a key still in use."""
        key = self._keys.get(kid or "")
        if key is None or not key.retired(_now(now)):
            return None
        return key.retires_at

    def _candidates(self, kid: str | None) -> list[_Key]:
        """The key named by `kid`; for a credential that names none (issued before key ids), every key."""
        if kid is None:
            return self._order
        key = self._keys.get(kid)
        return [key] if key is not None else []

    # -- device tokens -------------------------------------------------------------------------

    def device_token(self, identity: DeviceIdentity) -> str:
        """A token for `identity`, signed with the current key; it expires at ``identity.expires`` (None: never)."""
        # "/" appears in none of the fields (device ids, model names and token ids exclude it).
        fields = (identity.pk, identity.token_id, identity.device_id, identity.model)
        body = "/".join(map(str, (_TOKEN_FORMAT, self._current.kid, identity.expires or 0, *fields))).encode("ascii")
        return f"{DEVICE_PREFIX}{_b64(body)}.{_b64(hmac.digest(self._current.device, body, 'sha256'))}"

    def read_device_token(self, token: str) -> DeviceIdentity | None:
        """The identity a token asserts if its MAC verifies under a configured key (retired or not:
        the caller judges `kid` and `expires`); None for anything else."""
        if not token.startswith(DEVICE_PREFIX) or len(token) > 1024:
            return None
        body_text, _, mac_text = token[len(DEVICE_PREFIX) :].partition(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
            parts = body.decode("ascii").split("/")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        if len(parts) == 7 and parts[0] == _TOKEN_FORMAT:
            keys = self._candidates(parts[1])
        elif len(parts) == 4:  # issued before key ids and expiries
            keys = self._candidates(None)
        else:
            return None
        if len(mac) != _MAC_BYTES:
            return None
        key = next((k for k in keys if hmac.compare_digest(mac, hmac.digest(k.device, body, "sha256"))), None)
        if key is None:
            return None
        # We signed it: well-formed by construction.
        expires = (int(parts[2]) or None) if len(parts) == 7 else None  # 0: issued without an expiry
        pk, token_id, device_id, model = parts[-4:]
        return DeviceIdentity(
            pk=int(pk), device_id=device_id, model=model, token_id=token_id, expires=expires, kid=key.kid
        )

    # -- download URLs -------------------------------------------------------------------------

    def url_signature(self, sha256: str, expires: int, *, kid: str | None = None) -> str:
        """The `sig` of a download URL, under the key named `kid` (default: the current key)."""
        key = self._keys.get(kid or "", self._current)
        return _url_mac(key, sha256, expires)

    def sign_blob_path(self, path: str, sha256: str, *, ttl: int, now: float | None = None) -> str:
        """`path` with `expires`, `kid` and `sig` query parameters.

        The expiry is rounded up to a window of half the TTL, so every offer within a window carries
        the same URL (cacheable, stable ETags) and each URL stays valid between TTL/2 and TTL.
        """
        window = max(1, ttl // 2)
        expires = (int(_now(now)) // window + 2) * window
        return f"{path}?expires={expires}&kid={self._current.kid}&sig={_url_mac(self._current, sha256, expires)}"

    def blob_url_refusal(
        self, sha256: str, expires: int, sig: str, *, kid: str | None = None, now: float | None = None
    ) -> str | None:
        """None if the signed URL is good; else why not, in words a client can act on."""
        moment = _now(now)
        presented = sig.encode("ascii", "replace")
        key = next(
            (k for k in self._candidates(kid) if hmac.compare_digest(presented, _url_mac(k, sha256, expires).encode())),
            None,
        )
        if key is None:
            return "the download URL's signature is invalid; poll again for a fresh one"
        if key.retired(moment):
            return (
                f"the download URL was signed with a secret key retired at {format_moment(key.retires_at or 0)}; "
                "poll again for a fresh one"
            )
        if expires < moment:
            return "the download URL expired; poll again for a fresh one"
        return None

    # -- dashboard sessions --------------------------------------------------------------------

    def session_cookie(self, admin: str, *, ttl: int, now: float | None = None) -> str:
        """A signed dashboard session: a random id, the admin's name and an expiry (no server-side state)."""
        expires = int(_now(now)) + ttl
        body = json.dumps({"sid": secrets.token_hex(16), "admin": admin, "exp": expires}).encode("utf-8")
        key = self._current
        return f"{key.kid}.{_b64(body)}.{_b64(hmac.digest(key.session, body, 'sha256'))}"

    def read_session_cookie(self, cookie: str, *, now: float | None = None) -> DashboardSession | None:
        """The session a cookie names if its MAC verifies under a key not retired and it has not
        expired; None for anything else (the dashboard asks to sign in again)."""
        if len(cookie) > 1024:
            return None
        parts = cookie.split(".")
        if len(parts) == 3:
            kid, body_text, mac_text = parts
            keys = self._candidates(kid)
        elif len(parts) == 2:  # issued before key ids
            (body_text, mac_text), keys = parts, self._candidates(None)
        else:
            return None
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if len(mac) != _MAC_BYTES:
            return None
        moment = _now(now)
        key = next((k for k in keys if hmac.compare_digest(mac, hmac.digest(k.session, body, "sha256"))), None)
        if key is None or key.retired(moment):
            return None
        data = json.loads(body)  # we signed it: well-formed by construction
        if data["exp"] <= moment:
            return None
        return DashboardSession(sid=data["sid"], admin=data["admin"], expires=data["exp"])

    def csrf_token(self, sid: str) -> str:
        """The token every state-changing dashboard form carries: bound to the session, useless without it."""
        return _csrf_mac(self._current, sid)

    def check_csrf(self, sid: str, token: str, *, now: float | None = None) -> bool:
        """A form rendered before a rotation carries the previous key's token: it passes until that key retires."""
        presented = token.encode("ascii", "replace")
        moment = _now(now)
        return any(
            hmac.compare_digest(presented, _csrf_mac(k, sid).encode("ascii"))
            for k in self._order
            if not k.retired(moment)
        )


def _url_mac(key: _Key, sha256: str, expires: int) -> str:
    # utf-8: a path can carry any text, and a signature over it must be refused, not crash
    return _b64(hmac.new(key.url, f"{sha256}:{expires}".encode(), hashlib.sha256).digest()[:20])


def _csrf_mac(key: _Key, sid: str) -> str:
    return _b64(hmac.digest(key.csrf, sid.encode("ascii"), "sha256"))


@dataclass(frozen=True, slots=True)
class DashboardSession:
    sid: str
    admin: str
    expires: int
