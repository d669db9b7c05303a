"""Enrollment and the device token: enroll once, keep the token in DIR/credentials.json (mode 0600).

Tokens expire (the server says after how long: ``expires_in``). The agent renews its token once
half of that lifetime has passed on its own clock (:func:`renew_token`, called before each poll),
so a device that is off for a while, or whose clock drifts, still renews in time; the renewed token
replaces the stored one atomically. Credentials stored without a renewal time (written by an
agent before expiring tokens) are renewed at the first poll.

A token the server refuses for good (the device was deleted, its token expired while it was off,
or it was signed with a secret key since retired) is replaced by enrolling again when an
enrollment secret is at hand (:func:`reenroll`), under the same device id and with the refused
token as proof that this device held it; the device says so in its events (`re_enrolled`). Without
a secret it keeps serving, backs off slowly and shows the refusal in its status.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from .errors import EnrollmentError, TransientError
from .fsutil import read_json
from .policy import Backoff
from .protocol import TOKEN_LIFETIME_BOUNDS, Credentials

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger(__name__)
CREDENTIALS = "credentials.json"
RENEW_RETRY = 600.0  # seconds before a renewal the server could not answer is tried again


async def ensure_credentials(dev: Device) -> None:
    """Enroll once; the token is kept in DIR (mode 0600) and reused on every later start."""
    cfg = dev.config
    if cfg.token_file is not None:  # the operator's to manage: never renewed here
        dev.client.token = cfg.token_file.read_text().strip()
        return
    stored = _stored(dev)
    if stored is not None and stored.get("server") == cfg.server:
        dev.client.token = stored["token"]
        dev.device_id = stored.get("device_id") or dev.device_id
        renew_at = stored.get("renew_at", 0.0)  # none stored: an older agent's token, renewed at once
        if renew_at is not None and renew_at > cfg.clock() + TOKEN_LIFETIME_BOUNDS[1]:
            renew_at = 0.0  # further off than any token lives: the file, or the clock, is wrong
        dev.renew_at = renew_at
        return
    if not cfg.enroll_secret:
        raise EnrollmentError("no stored token: pass an enrollment secret or a token file")
    backoff = Backoff(cfg.backoff_base, cfg.backoff_max)
    while True:
        try:
            creds = await dev.client.enroll(
                secret=cfg.enroll_secret, model=cfg.model, device_id=cfg.device_id, labels=cfg.labels
            )
            break
        except TransientError as e:
            delay = backoff.next_delay(e.retry_after)
            log.warning("enrollment: %s; retrying in %.1f s", e, delay)
            await dev.sleep(delay)
            if dev.stopping:
                raise
    _store_credentials(dev, creds)


def _stored(dev: Device) -> dict[str, Any] | None:
    """The stored credentials, or None. A file that is garbled or holds the wrong types is reset
    (the device enrolls again): it is untrusted input like any other the agent reads back. A
    renewal time that is not a finite number only means "renew now"."""
    path = dev.config.model_dir / CREDENTIALS
    try:
        value = read_json(path)
    except (OSError, ValueError) as e:
        dev.note_reset(CREDENTIALS, f"unreadable: {e}")
        return None
    if value is None:
        return None
    fields = ("token", "server", "device_id")
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value.get(k) for k in fields[:2]):
        dev.note_reset(CREDENTIALS, "not a credentials object")
        return None
    if not isinstance(value.get("device_id"), str | None):
        dev.note_reset(CREDENTIALS, "device_id is not a string")
        return None
    stored: dict[str, Any] = {k: value[k] for k in fields if value.get(k)}
    renew_at = value.get("renew_at")
    if isinstance(renew_at, int | float) and not isinstance(renew_at, bool) and math.isfinite(renew_at):
        stored["renew_at"] = float(renew_at)
    elif "renew_at" in value and renew_at is not None:
        stored["renew_at"] = 0.0
    elif "renew_at" in value:  # null: stored from a server whose tokens never expire
        stored["renew_at"] = None
    return stored


async def renew_token(dev: Device) -> None:
    """Renew the token once half its lifetime has passed; the new one replaces the stored one atomically.

    A refusal (:class:`AuthError`) propagates: the state machine's error handler enrolls again.
    Anything else (the server unreachable, or too old to renew tokens) is retried after
    :data:`RENEW_RETRY` seconds; the token in hand keeps working meanwhile.
    """
    now = dev.config.clock()
    if dev.renew_at is None or now < dev.renew_at or dev.config.token_file is not None:
        return
    try:
        token, lifetime = await dev.client.renew_token()
    except TransientError as e:
        log.warning("token renewal failed (%s); trying again in %.0f s", e, RENEW_RETRY)
        dev.renew_at = now + RENEW_RETRY
        return
    _store_credentials(dev, Credentials(dev.device_id or "", token, lifetime), now=now)
    log.info("device token renewed%s", "" if lifetime is None else f"; it lives {lifetime:.0f} s")


async def reenroll(dev: Device, why: str) -> bool:
    """Enroll again after the server refused our token; False when it cannot be done now (no secret,
    a token file, or enrollment refused or unreachable: the caller keeps backing off slowly)."""
    cfg = dev.config
    if cfg.token_file is not None or not cfg.enroll_secret:
        return False
    try:
        creds = await dev.client.enroll(
            secret=cfg.enroll_secret,
            model=cfg.model,
            device_id=dev.device_id or cfg.device_id,
            labels=cfg.labels,
            previous_token=dev.client.token,  # proves this device held the refused token: same id, same history
        )
    except (EnrollmentError, TransientError) as e:
        log.warning("the server refused our token (%s) and enrolling again failed: %s", why, e)
        return False
    _store_credentials(dev, creds)
    version = dev.holder.version
    detail = f"the server refused the device token ({why}); enrolled again"
    dev.emit("checking", version, reason="re_enrolled", detail=detail, installed_version=version)
    return True


def _store_credentials(dev: Device, creds: Credentials, *, now: float | None = None) -> None:
    """Keep the token (atomically: a crash leaves the old file or the new one) and when to renew it."""
    moment = dev.config.clock() if now is None else now
    dev.device_id = creds.device_id or dev.device_id
    dev.renew_at = None if creds.expires_in is None else moment + creds.expires_in / 2
    value = {
        "device_id": dev.device_id,
        "token": creds.token,
        "server": dev.config.server,
        "renew_at": dev.renew_at,
    }
    try:
        dev.disk.write_json(dev.config.model_dir / CREDENTIALS, value, mode=0o600, durable=dev.config.durable)
    except OSError as e:  # the token still works from memory; the next start enrolls again
        log.error("credentials not saved (%s); this run keeps them in memory", e)
    log.info("credentials for %s stored", dev.device_id)
