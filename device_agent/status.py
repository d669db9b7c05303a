"""What `GET /status` and `Agent.status()` show: one device's state, read from any thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .protocol import now_rfc3339

if TYPE_CHECKING:
    from .device import Device


def status(dev: Device) -> dict[str, Any]:
    model = dev.holder.model
    job = dev.record.job
    install = dev.install
    progress = None if install is None else install.progress.value
    return {
        "device_id": dev.device_id,
        "model": dev.config.model,
        "version": dev.holder.version,
        "state": dev.state.value,
        "slot": dev.slots.active(),
        "target_version": None if job is None else job.version,
        "download": None
        if progress is None or job is None
        else {"source": job.source, "received": progress[0], "length": progress[1]},
        "labels": None if model is None else list(model.manifest.labels),
        "failed_versions": {str(v): r for v, r in dict(dev.record.failed).items()},
        "last_error": dev.last_error,
        "last_install": dev.installs[-1] if dev.installs else None,
        "installs": list(dev.installs),
        "events_queued": dev.events_queued,
        "storage": {
            "updates": "impossible: the model directory is read-only" if dev.read_only else "possible",
            "error": dev.storage_error,
            "files_reset": list(dev.files_reset),
        },
        "trust": dev.trust_keeper.describe(),
        "requests_served": dev.holder.metrics.total,
        "at": now_rfc3339(),
    }
