"""Fleet policy: enrolling devices, what their events mean, and the views admins read.

Event semantics (a device reports them in order; the last status-bearing one wins):

- ``checking``, ``downloading``, ``verified``: progress; the status follows, the installed version does not.
- ``installed``: the device now runs ``version``.
- ``failed``: an attempt failed (``reason`` says why); the installed version is unchanged.
- ``rolled_back``: the device went back to what it ran before (``installed_version`` if it says which).
- ``metrics``: inference statistics of the installed version; kept as the device's latest metrics,
  the status is unchanged.

Any event may carry ``installed_version`` (what the device runs now), which always wins.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from ..api import schemas
from ..data import devices as device_data
from ..db.models import Device
from ..db.session import utcnow
from ..errors import BadRequestError, DeviceExistsError
from .security import DeviceIdentity, Signer, new_token_id


def enroll(
    session: Session, signer: Signer, *, device_id: str | None, model: str, labels: dict[str, str]
) -> tuple[Device, str]:
    """Create the device and its token (committed); :class:`DeviceExistsError` if the id is taken."""
    device_id = device_id or f"dev-{secrets.token_hex(8)}"
    if device_data.get_device(session, device_id=device_id) is not None:
        raise DeviceExistsError(
            f"device {device_id!r} is already enrolled; an admin must delete it before it can enroll again"
        )
    try:
        device = device_data.create_device(
            session, device_id=device_id, model=model, token_id=new_token_id(), labels=labels
        )
        session.commit()
    except sa_exc.IntegrityError as e:  # a concurrent enrollment of the same id won
        session.rollback()
        raise DeviceExistsError(f"device {device_id!r} is already enrolled") from e
    token = signer.device_token(
        DeviceIdentity(pk=device.id, device_id=device.device_id, model=device.model_name, token_id=device.token_id)
    )
    return device, token


def _reason(e: schemas.Event) -> str | None:
    """`reason: detail`, cut to the column's 500 characters."""
    text = f"{e.reason}: {e.detail}" if e.reason and e.detail else e.reason or e.detail
    return text[:500] if text else None


def _context(e: schemas.Event) -> dict[str, Any] | None:
    """The optional facts of a lifecycle event (source, bytes, from_version, state), stored beside it."""
    facts = {k: getattr(e, k) for k in ("source", "bytes", "from_version", "state") if getattr(e, k) is not None}
    return facts or None


def apply_events(session: Session, *, device: Device, events: Sequence[schemas.Event]) -> None:
    """Record events and fold them into the device's status, installed version and metrics."""
    now = utcnow()
    rows = []
    for e in events:
        rows.append(
            {
                "type": e.type,
                "version": e.version,
                "reason": _reason(e),
                "metrics": e.metrics if e.type == "metrics" else _context(e),
                "device_time": e.at,
            }
        )
        if e.type == "metrics":
            device.last_metrics = {"version": e.version, **(e.metrics or {})}
        else:
            device.status = e.type
            device.status_reason = e.reason
            device.status_at = now
            if e.type == "installed":
                device.installed_version = e.version
        if e.installed_version is not None:
            device.installed_version = e.installed_version
    device.last_seen_at = now
    device_data.add_events(session, device_pk=device.id, events=rows)


def device_out(device: Device, labels: dict[str, str]) -> schemas.DeviceOut:
    return schemas.DeviceOut(
        device_id=device.device_id,
        model=device.model_name,
        labels=labels,
        installed_version=device.installed_version,
        status=device.status,
        status_reason=device.status_reason,
        status_at=device.status_at,
        enrolled_at=device.enrolled_at,
        last_seen_at=device.last_seen_at,
    )


def encode_cursor(after: int) -> str:
    return base64.urlsafe_b64encode(f"d:{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, value = text.partition(":")
        after = int(value)
        if kind != "d" or after < 0:
            raise ValueError(text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise BadRequestError(f"cursor {cursor[:40]!r} is not one this server issued") from e
    return after


def parse_labels(values: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for v in values:
        key, sep, value = v.partition(":")
        if not sep or not key:
            raise BadRequestError(f"label filter {v[:80]!r} must look like key:value")
        out.append((key, value))
    return out


def fleet_summary(session: Session, offered: dict[str, int]) -> schemas.Fleet:
    by_version, by_status = device_data.fleet_counts(session)
    models: dict[str, schemas.FleetModel] = {}

    def entry(name: str) -> schemas.FleetModel:
        if name not in models:
            models[name] = schemas.FleetModel(
                model=name, offered_version=offered.get(name), devices=0, versions=[], statuses={}
            )
        return models[name]

    for name, version, count in by_version:
        m = entry(name)
        m.devices += count
        m.versions.append(schemas.VersionCount(version=version, devices=count))
    for name, status, count in by_status:
        entry(name).statuses[status] = count
    for name in offered:
        entry(name)
    return schemas.Fleet(models=[models[k] for k in sorted(models)])
