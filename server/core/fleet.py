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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ..data import devices as device_data
from ..data import retention as retention_data
from ..db.models import Device, DeviceEvent, DeviceMetricSummary
from ..db.session import Database, Session, utcnow
from ..errors import (
    AuthenticationError,
    BadRequestError,
    ConstraintViolationError,
    DeviceExistsError,
    DeviceNotFoundError,
)
from .security import DeviceIdentity, Signer, new_token_id


class EventReport(Protocol):
    """One event as a device reports it (the API's ``Event`` schema has these fields)."""

    @property
    def type(self) -> str: ...
    @property
    def version(self) -> int | None: ...
    @property
    def installed_version(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def at(self) -> datetime | None: ...
    @property
    def metrics(self) -> dict[str, float] | None: ...


@dataclass(frozen=True)
class Enrolled:
    device: Device
    token: str
    expires: int  # Unix time the token stops working
    again: bool = False  # an enrolled device renewed its credential (see `Fleet.enroll`)


@dataclass(frozen=True)
class DeviceRecord:
    """One device as an admin reads it: the row, its labels, its latest events (newest first), and the
    metric summaries event retention kept of its older events (per version)."""

    device: Device
    labels: dict[str, str]
    events: list[DeviceEvent]
    summaries: list[DeviceMetricSummary] = field(default_factory=list)


@dataclass(frozen=True)
class DevicePage:
    items: list[tuple[Device, dict[str, str]]]  # each device with its labels
    next_cursor: str | None


class EventHook(Protocol):
    """What else must happen, in the same transaction, when a device's events are recorded."""

    def __call__(self, session: Session, *, device_pk: int, model: str, events: Sequence[Any]) -> None: ...


class Fleet:
    """Enrollment, events and the admin's views of devices; each method is one transaction (blocking)."""

    def __init__(
        self, db: Database, signer: Signer, *, on_events: EventHook | None = None, token_seconds: int = 30 * 86400
    ) -> None:
        self.db = db
        self.signer = signer
        self.on_events = on_events
        self.token_seconds = token_seconds

    def enroll(
        self, *, device_id: str | None, model: str, labels: dict[str, str], previous: DeviceIdentity | None = None
    ) -> Enrolled:
        """Create the device and its token (committed); :class:`DeviceExistsError` if the id is taken.

        An enrolled device enrolls again — keeping its row, history and labels — when `previous` is
        a token this server issued to that very enrollment (its MAC verified under a configured key,
        retired or not, expired or not): the way back for a device whose token expired while it was
        off, or whose key was retired. A revoked device has no row any more and simply enrolls anew.
        """
        device_id = device_id or f"dev-{secrets.token_hex(8)}"
        try:
            with self.db.session() as session:
                existing = device_data.get_device(session, device_id=device_id)
                if existing is not None:
                    if not _proves(previous, existing):
                        raise DeviceExistsError(
                            f"device {device_id!r} is already enrolled; it may enroll again with its previous token "
                            "(previous_token), or after an admin deleted it"
                        )
                    if existing.model_name != model:
                        raise DeviceExistsError(
                            f"device {device_id!r} is enrolled for model {existing.model_name!r}, not {model!r}"
                        )
                    return self._issue(existing, again=True)
                device = device_data.create_device(
                    session, device_id=device_id, model=model, token_id=new_token_id(), labels=labels
                )
                session.commit()
        except ConstraintViolationError as e:  # a concurrent enrollment of the same id won
            raise DeviceExistsError(f"device {device_id!r} is already enrolled") from e
        return self._issue(device)

    def renew(self, device: Device) -> Enrolled:
        """A fresh token for an enrolled device, signed with the current key, expiring later (no write)."""
        return self._issue(device)

    def _issue(self, device: Device, *, again: bool = False) -> Enrolled:
        expires = int(time.time()) + self.token_seconds
        identity = DeviceIdentity(
            pk=device.id, device_id=device.device_id, model=device.model_name, token_id=device.token_id, expires=expires
        )
        return Enrolled(device, self.signer.device_token(identity), expires, again)

    def enrolled(self, pk: int) -> Device:
        """The calling device's row; :class:`AuthenticationError` if it was deleted since its token was checked."""
        with self.db.session() as session:
            return _enrolled(session, pk)

    def record_events(self, *, device_pk: int, events: Sequence[EventReport]) -> Device:
        """Record a device's events and fold them into its row (committed); the updated row."""
        with self.db.session() as session:
            device = _enrolled(session, device_pk)
            apply_events(session, device=device, events=events)
            if self.on_events is not None:  # the rollouts fold the same events in, in the same transaction
                self.on_events(session, device_pk=device.id, model=device.model_name, events=events)
            session.commit()
            return device

    def list_devices(
        self,
        *,
        model: str | None,
        version: int | None,
        status: str | None,
        labels: Sequence[str],
        cursor: str | None,
        limit: int,
    ) -> DevicePage:
        after = decode_cursor(cursor)
        label_filters = parse_labels(labels)
        with self.db.session() as session:
            page = device_data.list_devices(
                session, model=model, version=version, status=status, labels=label_filters, after=after, limit=limit + 1
            )
            more = len(page) > limit
            page = page[:limit]
            label_map = device_data.labels_of(session, pks=[d.id for d in page])
        return DevicePage(
            items=[(d, label_map[d.id]) for d in page],
            next_cursor=encode_cursor(page[-1].id) if more else None,
        )

    def get_device(self, device_id: str) -> DeviceRecord:
        with self.db.session() as session:
            device = _device(session, device_id)
            labels = device_data.labels_of(session, pks=[device.id])[device.id]
            events = device_data.recent_events(session, device_pk=device.id)
            summaries = retention_data.summaries_of(session, device_pk=device.id)
        return DeviceRecord(device, labels, events, summaries)

    def delete_device(self, device_id: str) -> None:
        """Delete the device and revoke its token (committed); :class:`DeviceNotFoundError` if there is none."""
        with self.db.session() as session:
            device_data.delete_device(session, device=_device(session, device_id))
            session.commit()

    def counts(self) -> tuple[list[tuple[str, int | None, int]], list[tuple[str, str, int]]]:
        """(model, installed version, devices) and (model, status, devices) rows."""
        with self.db.session() as session:
            return device_data.fleet_counts(session)


def _proves(previous: DeviceIdentity | None, device: Device) -> bool:
    """A token (verified by its MAC) issued to this enrollment of this device: same row, same token id."""
    return (
        previous is not None
        and previous.pk == device.id
        and previous.device_id == device.device_id
        and previous.token_id == device.token_id
    )


def _enrolled(session: Session, pk: int) -> Device:
    device = device_data.get_device_by_pk(session, pk=pk)
    if device is None:
        raise AuthenticationError("this device is no longer enrolled")
    return device


def _device(session: Session, device_id: str) -> Device:
    device = device_data.get_device(session, device_id=device_id)
    if device is None:
        raise DeviceNotFoundError(f"no device {device_id!r}")
    return device


def _reason(e: EventReport) -> str | None:
    """`reason: detail`, cut to the column's 500 characters."""
    text = f"{e.reason}: {e.detail}" if e.reason and e.detail else e.reason or e.detail
    return text[:500] if text else None


def _context(e: EventReport) -> dict[str, Any] | None:
    """The optional facts of a lifecycle event (source, bytes, from_version, state), stored beside it."""
    facts = {k: getattr(e, k) for k in ("source", "bytes", "from_version", "state") if getattr(e, k) is not None}
    return facts or None


def apply_events(session: Session, *, device: Device, events: Sequence[EventReport]) -> None:
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
                _runs(device, e.version)
        if e.installed_version is not None:
            _runs(device, e.installed_version)
    device.last_seen_at = now
    device_data.add_events(session, device_pk=device.id, events=rows)


def _runs(device: Device, version: int | None) -> None:
    """The device now runs `version`; what it ran before stays in its other slot (the storage GC keeps it)."""
    if version is not None and device.installed_version is not None and version != device.installed_version:
        device.previous_version = device.installed_version
    device.installed_version = version


def encode_cursor(after: int) -> str:
    return base64.urlsafe_b64encode(f"d:{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, value = text.partition(":")
        after = int(value)
        if kind != "d" or not 0 <= after < 2**63:  # a BIGINT, like the ids it names
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
