"""Enrollment and the device token: enroll once, keep the token in DIR/credentials.json (mode 0600).

A token the server refuses for good (the device was deleted, its token revoked) is replaced by
enrolling again when an enrollment secret is at hand (:func:`reenroll`), under the same device id.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import EnrollmentError, TransientError
from .fsutil import atomic_write_json, read_json
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
    stored = read_json(cfg.model_dir / CREDENTIALS)
    if isinstance(stored, dict) and stored.get("token") and stored.get("server") == cfg.server:
        dev.client.token = str(stored["token"])
        dev.device_id = str(stored.get("device_id") or dev.device_id)
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
    atomic_write_json(dev.config.model_dir / CREDENTIALS, value, mode=0o600, durable=dev.config.durable)
    log.info("enrolled as %s", creds.device_id)
