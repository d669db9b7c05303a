"""The Python API of one device agent: `Agent(config).run()` in an event loop, `predict` from any thread.

`device-agent run` is this class plus :mod:`device_agent.serve`. The agent serves the installed
model from the moment it starts, before it has reached the server, and keeps serving it whatever
the server or the network does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx
from PIL import Image

from .config import AgentConfig
from .device import Device
from .enroll import ensure_credentials
from .errors import NoModelError, TransientError
from .machine import run_machine
from .sessions import LocalRuntime, Runtime
from .status import status
from .workers import update_executor

log = logging.getLogger(__name__)
USER_AGENT = "ota-device-agent/0.1"
STOP_GRACE = 5.0  # seconds a clean stop waits for an event delivery in flight


def http_client(
    *, timeout: float, connections: int = 10, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """Redirects are followed (a blob URL may redirect to object storage); httpx drops the bearer
    token when a redirect leaves the server's origin. `transport` replaces the network (tests)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0, pool=None),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
        transport=transport,
    )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        runtime: Runtime | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime or LocalRuntime(config.threads)
        self._transport = transport  # the network, unless a test puts the server in-process
        self.ready = threading.Event()  # set once the installed model (if any) is loaded and served
        self._device: Device | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False

    @property
    def device(self) -> Device | None:
        return self._device

    def predict(self, image: bytes | Image.Image) -> dict[str, Any]:
        """`{"label", "score", "top_k", "model", "version"}` for one PNG/JPEG image (bytes or PIL)."""
        if self._device is None:
            raise NoModelError("the agent has not started yet")
        return self._device.holder.predict(image)

    def status(self) -> dict[str, Any]:
        if self._device is None:
            return {"model": self.config.model, "version": None, "state": "starting"}
        return status(self._device)

    def stop(self) -> None:
        """Ask a running agent to stop; safe from any thread and from signal handlers."""
        self._stop_requested = True
        loop, device = self._loop, self._device
        if loop is not None and device is not None:
            loop.call_soon_threadsafe(device.request_stop)

    async def run(self) -> None:
        """Boot, enroll if needed, then poll and install until `stop()`; a crash of the loop is re-raised."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_default_executor(update_executor(self.config.update_niceness))
        async with http_client(timeout=self.config.http_timeout, transport=self._transport) as http:
            device = Device(self.config, http=http, runtime=self.runtime)
            await device.start()
            self._device = device
            if self._stop_requested:
                device.request_stop()
            self.ready.set()
            try:
                await self._serve(device)
            finally:
                if device.stopping:
                    device.record.clean_exit = True
                    device.save()
                await device.reporter.flush(timeout=2.0)
                device.close()

    async def _serve(self, device: Device) -> None:
        try:
            await ensure_credentials(device)
        except TransientError:
            if device.stopping:
                return
            raise
        reporter = asyncio.create_task(device.reporter.report_forever(), name="event-reporter")
        tasks = [
            asyncio.create_task(run_machine(device), name="update-machine"),
            reporter,
            asyncio.create_task(device.wait_stopped(), name="stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                if task is not reporter:
                    task.cancel()
            if device.stopping:  # a delivery in flight may finish: cut, its events would be sent again
                await asyncio.wait([reporter], timeout=STOP_GRACE)
            reporter.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
