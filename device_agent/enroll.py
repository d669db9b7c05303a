"""Enrollment and the device token: enroll once, keep the token in DIR/credentials.json (mode 0600).

A token the server refuses for good (the device was deleted, its token revoked) is replaced by
enrolling again when an enrollment secret is at hand (:func:`reenroll`), under the same device id.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import EnrollmentError, TransientError
from .fsutil import read_json
from .policy import Backoff
from .protocol import Credentials

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger(__name__)
CREDENTIALS = "credentials.json"


async def ensure_credentials(dev: Device) -> None:
    """Enroll once; the token is kept in DIR (mode 0600) and reused on every later start."""
    cfg = dev.config
    if cfg.token_file is not None:
        dev.client.token = cfg.token_file.read_text().strip()
        return
    stored = _stored(dev)
    if stored is not None and stored.get("server") == cfg.server:
        dev.client.token = stored["token"]
        dev.device_id = stored.get("device_id") or dev.device_id
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


def _stored(dev: Device) -> dict[str, str] | None:
    """The stored credentials, or None. A file that is garbled or holds the wrong types is reset
    (the device enrolls again): it is untrusted input like any other the agent reads back."""
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
    return {k: value[k] for k in fields if value.get(k)}


async def reenroll(dev: Device, why: str) -> bool:
    """Enroll again after the server refused our token; False when it cannot be done now (no secret,
    a token file, or enrollment refused or unreachable: the caller keeps backing off slowly)."""
    cfg = dev.config
    if cfg.token_file is not None or not cfg.enroll_secret:
        return False
    try:
        creds = await dev.client.enroll(
            secret=cfg.enroll_secret, model=cfg.model, device_id=dev.device_id or cfg.device_id, labels=cfg.labels
        )
    except (EnrollmentError, TransientError) as e:
        log.warning("the server refused our token (%s) and enrolling again failed: %s", why, e)
        return False
    _store_credentials(dev, creds)
    version = dev.holder.version
    detail = f"the server refused the device token ({why}); enrolled again"
    dev.emit("checking", version, reason="re_enrolled", detail=detail, installed_version=version)
    return True


def _store_credentials(dev: Device, creds: Credentials) -> None:
    dev.device_id = creds.device_id
    value = {"device_id": creds.device_id, "token": creds.token, "server": dev.config.server}
    try:
        dev.disk.write_json(dev.config.model_dir / CREDENTIALS, value, mode=0o600, durable=dev.config.durable)
    except OSError as e:  # the token still works from memory; the next start enrolls again
        log.error("credentials not saved (%s); this run keeps them in memory", e)
    log.info("enrolled as %s", creds.device_id)
