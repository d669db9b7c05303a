"""Boot: serve the active slot if it still passes the door; else fall back to the other one.

A fallback moves the pointer and is reported as `rolled_back`; a device with no servable slot
reports `rolled_back` with no version and serves nothing until an install succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import artifact as A

from .errors import SlotError, ValidationFailedError
from .policy import reason_code
from .runtime import LoadedModel
from .slots import SLOTS, SlotContent, other

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger(__name__)


async def boot(dev: Device) -> None:
    """Serve the active slot if it still passes the door; else the other one, reported `rolled_back`."""
    active = dev.slots.active()
    order = [active, other(active)] if active else sorted(SLOTS, key=lambda s: -(dev.slots.version(s) or 0))
    refused: list[tuple[str, Exception]] = []
    for slot in order:
        if dev.slots.version(slot) is None and slot != active:
            continue
        try:
            content = await asyncio.to_thread(dev.slots.load, slot, trust=dev.config.trust, model=dev.config.model)
            model = await asyncio.to_thread(dev.runtime.load, content.onnx, content.verified)
        except (SlotError, A.ArtifactError, ValidationFailedError) as e:
            log.error("slot %s cannot be served: %s", slot, e)
            refused.append((slot, e))
            continue
        _serve_booted(dev, content, model, active, refused)
        return
    if refused:
        _, why = refused[0]
        dev.emit("rolled_back", None, reason=reason_code(why), detail=str(why), from_version=None)


def _serve_booted(
    dev: Device, content: SlotContent, model: LoadedModel, active: str | None, refused: list[tuple[str, Exception]]
) -> None:
    if content.slot != active:
        dev.slots.activate(content.slot)
        if active is not None:
            _, why = refused[0]
            bad = dev.slots.version(active)
            log.warning("rolled back from slot %s (v%s) to slot %s (v%s)", active, bad, content.slot, content.version)
            dev.emit("rolled_back", content.version, reason=reason_code(why), detail=str(why), from_version=bad)
    dev.holder.swap(model)
    log.info("serving %s v%d from slot %s", dev.config.model, content.version, content.slot)
