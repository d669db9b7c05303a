"""Boot: serve the active slot if it still passes the door; else fall back to the other one.

A fallback moves the pointer and is reported as `rolled_back`; a device with no servable slot
reports `rolled_back` with no version and serves nothing until an install succeeds.

A model that kills the process while it loads (a segfault in the runtime, the OOM killer) would
otherwise be loaded again at every start: the attempt is counted in DIR/state.json *before* the
model is loaded and cleared once it serves, so after `max_crashes` unfinished attempts the slot is
not loaded again. Its version is remembered as failed (`crash_loop`) and the other valid slot is
served; with none, the device serves nothing (503) but keeps polling, so a new version can heal it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import artifact as A

from .errors import CrashLoopError, SlotError, TrustPendingError, ValidationFailedError
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
    attempts = dev.record.boot_attempts
    for slot in order:
        if dev.slots.version(slot) is None and slot != active:
            continue
        if attempts.get(slot, 0) >= dev.config.max_crashes:
            refused.append((slot, _abandon(dev, slot)))
            continue
        try:
            content = await asyncio.to_thread(dev.slots.load, slot, trust=dev.trust, model=dev.config.model)
            attempts[slot] = attempts.get(slot, 0) + 1
            dev.save()  # persisted before loading: a load that kills the process is counted
            dev.crash_point(f"boot:loading:{slot}")
            model = await asyncio.to_thread(dev.runtime.load, content.onnx, content.verified)
        except (SlotError, A.ArtifactError, ValidationFailedError, TrustPendingError) as e:
            log.error("slot %s cannot be served: %s", slot, e)
            attempts.pop(slot, None)
            refused.append((slot, e))
            continue
        attempts.pop(slot, None)
        dev.save()
        _serve_booted(dev, content, model, active, refused)
        return
    if attempts:
        dev.save()
    if refused:
        _, why = refused[0]
        dev.emit("rolled_back", None, reason=reason_code(why), detail=str(why), from_version=None)


def _abandon(dev: Device, slot: str) -> CrashLoopError:
    """A slot whose model killed the agent `max_crashes` times while loading: never loaded again."""
    version = dev.slots.version(slot)
    n = dev.record.boot_attempts[slot]
    log.error("slot %s (v%s) did not finish loading %d times; not loading it again", slot, version, n)
    if version is not None:
        dev.record.remember_failed(version, "crash_loop")
    return CrashLoopError(f"the agent died {n} times loading v{version} from slot {slot} at start")


def _serve_booted(
    dev: Device, content: SlotContent, model: LoadedModel, active: str | None, refused: list[tuple[str, Exception]]
) -> None:
    if content.slot != active:
        try:
            dev.slots.activate(content.slot)
        except OSError as e:  # a full disk: serve it anyway; the pointer is rewritten at the next start
            log.error("slot pointer not moved to %s: %s", content.slot, e)
            dev.slots.assume_active(content.slot)
        if active is not None and refused:
            _, why = refused[0]
            bad = dev.slots.version(active)
            log.warning("rolled back from slot %s (v%s) to slot %s (v%s)", active, bad, content.slot, content.version)
            dev.emit("rolled_back", content.version, reason=reason_code(why), detail=str(why), from_version=bad)
    dev.holder.swap(model)
    log.info("serving %s v%d from slot %s", dev.config.model, content.version, content.slot)
