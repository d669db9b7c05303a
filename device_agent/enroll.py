"""Enrollment and the device token: enroll once, keep the token in DIR/credentials.json (mode 0600)."""

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


def _store_credentials(dev: Device, creds: Credentials) -> None:
    dev.device_id = creds.device_id
    value = {"device_id": creds.device_id, "token": creds.token, "server": dev.config.server}
    atomic_write_json(dev.config.model_dir / CREDENTIALS, value, mode=0o600, durable=dev.config.durable)
    log.info("enrolled as %s", creds.device_id)
