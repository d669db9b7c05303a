"""Devices, their labels and events; the fleet summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from ..db.models import Device, DeviceEvent, DeviceLabel, RevokedToken
from ..db.session import utcnow


def create_device(session: Session, *, device_id: str, model: str, token_id: str, labels: Mapping[str, str]) -> Device:
    device = Device(device_id=device_id, model_name=model, token_id=token_id, enrolled_at=utcnow(), status="enrolled")
    session.add(device)
    session.flush()
    session.add_all(DeviceLabel(device_pk=device.id, key=k, value=v) for k, v in labels.items())
    session.flush()
    return device


@dataclass(frozen=True)
class NewDevice:
    device_id: str
    model: str
    token_id: str
    labels: Mapping[str, str]


def create_devices(session: Session, *, devices: Sequence[NewDevice]) -> list[int]:
    """Bulk enrollment (fleet provisioning, benchmarks): one multi-row insert per table; returns the ids."""
    if not devices:
        return []
    now = utcnow()
    rows = session.execute(
        insert(Device).returning(Device.id, sort_by_parameter_order=True),
        [
            {
                "device_id": d.device_id,
                "model_name": d.model,
                "token_id": d.token_id,
                "enrolled_at": now,
                "status": "enrolled",
            }
            for d in devices
        ],
    )
    pks = [pk for (pk,) in rows]
    labels = [
        {"device_pk": pk, "key": k, "value": v} for pk, d in zip(pks, devices, strict=True) for k, v in d.labels.items()
    ]
    if labels:
        session.execute(insert(DeviceLabel), labels)
    return pks


def get_device(session: Session, *, device_id: str) -> Device | None:
    return session.scalars(select(Device).where(Device.device_id == device_id)).one_or_none()


def get_device_by_pk(session: Session, *, pk: int) -> Device | None:
    return session.get(Device, pk)


def labels_of(session: Session, *, pks: Sequence[int]) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {pk: {} for pk in pks}
    if pks:
        rows = session.execute(
            select(DeviceLabel.device_pk, DeviceLabel.key, DeviceLabel.value)
            .where(DeviceLabel.device_pk.in_(pks))
            .order_by(DeviceLabel.device_pk, DeviceLabel.key)
        )
        for pk, key, value in rows:
            out[pk][key] = value
    return out


def list_devices(
    session: Session,
    *,
    model: str | None = None,
    version: int | None = None,
    status: str | None = None,
    labels: Sequence[tuple[str, str]] = (),
    after: int = 0,
    limit: int = 100,
) -> list[Device]:
    """One page in id order, starting after the device with id `after` (keyset pagination).

    Each filter has an index that yields rows already in id order — (model, version, id),
    (status, id), labels (key, value, device_pk) — so a page costs the same at the 100,000th device
    as at the first.
    """
    stmt = select(Device).where(Device.id > after)
    if model is not None:
        stmt = stmt.where(Device.model_name == model)
    if version is not None:
        stmt = stmt.where(Device.installed_version == version)
    if status is not None:
        stmt = stmt.where(Device.status == status)
    for i, (key, value) in enumerate(labels):
        label = aliased(DeviceLabel)
        match = and_(label.device_pk == Device.id, label.key == key, label.value == value)
        # Drive the scan from the label index for the first label; check the others per row.
        stmt = stmt.join(label, match) if i == 0 else stmt.where(exists().where(match))
    return list(session.scalars(stmt.order_by(Device.id).limit(limit)))


def delete_device(session: Session, *, device: Device) -> None:
    """Remove a device and revoke its token for good (its token id is listed in revoked_tokens)."""
    session.add(RevokedToken(token_id=device.token_id, device_id=device.device_id, revoked_at=utcnow()))
    session.execute(delete(Device).where(Device.id == device.id))
    session.flush()


def revoked_token_ids(session: Session) -> frozenset[str]:
    return frozenset(session.scalars(select(RevokedToken.token_id)))


def revoked_token_count(session: Session) -> int:
    """Rows only ever get added, so an unchanged count means an unchanged set (a cheap refresh check)."""
    return session.scalar(select(func.count()).select_from(RevokedToken)) or 0


def add_events(session: Session, *, device_pk: int, events: Sequence[Mapping[str, Any]]) -> None:
    """Append events (dicts with type, version, reason, metrics, device_time) to a device's log."""
    now = utcnow()
    session.add_all(DeviceEvent(device_pk=device_pk, received_at=now, **e) for e in events)
    session.flush()


def recent_events(session: Session, *, device_pk: int, limit: int = 20) -> list[DeviceEvent]:
    return list(
        session.scalars(
            select(DeviceEvent).where(DeviceEvent.device_pk == device_pk).order_by(DeviceEvent.id.desc()).limit(limit)
        )
    )


def touch_last_seen(session: Session, *, device_pks: Sequence[int], seen: datetime) -> None:
    """Set last_seen_at for many devices at once (never moving a timestamp backwards)."""
    for i in range(0, len(device_pks), 5000):  # well under both databases' bound-parameter limits
        session.execute(
            update(Device)
            .where(Device.id.in_(device_pks[i : i + 5000]))
            .where(Device.last_seen_at.is_(None) | (Device.last_seen_at < seen))
            .values(last_seen_at=seen)
            .execution_options(synchronize_session=False)
        )


def fleet_counts(session: Session) -> tuple[list[tuple[str, int | None, int]], list[tuple[str, str, int]]]:
    """(model, installed version, devices) and (model, status, devices) rows."""
    by_version = session.execute(
        select(Device.model_name, Device.installed_version, func.count())
        .group_by(Device.model_name, Device.installed_version)
        .order_by(Device.model_name, Device.installed_version)
    )
    by_status = session.execute(
        select(Device.model_name, Device.status, func.count())
        .group_by(Device.model_name, Device.status)
        .order_by(Device.model_name, Device.status)
    )
    return [(m, v, n) for m, v, n in by_version], [(m, s, n) for m, s, n in by_status]


def stale_counts(session: Session, *, seen_before: datetime) -> dict[str, int]:
    """Devices per model not seen since `seen_before` (never-seen devices count from their enrollment)."""
    last = func.coalesce(Device.last_seen_at, Device.enrolled_at)
    rows = session.execute(
        select(Device.model_name, func.count()).where(last < seen_before).group_by(Device.model_name)
    )
    return {m: n for m, n in rows}
