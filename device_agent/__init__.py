"""Device agent: poll, fetch, verify, validate and hot-swap ONNX models; a fleet simulator.

Installs with `pip install .[agent]` alone: it imports `artifact`, onnxruntime, httpx, numpy,
pillow and the standard library, never torch or the server. Everything public is named here:

- :class:`Agent` and its :class:`AgentConfig`: one device, `run()` in an event loop, `predict` from any thread;
- :class:`InferenceServer`: the `--serve` HTTP endpoint (POST /predict, GET /status) around an agent;
- :func:`run_fleet` with :class:`FleetOptions` → :class:`FleetReport`: the fleet simulator;
- :func:`main`: the `device-agent` command line;
- :class:`AgentError`, the base of everything the agent raises, and the errors a caller handles:
  :class:`EnrollmentError` and :class:`DirectoryLockedError` from `Agent.run`, :class:`InferenceError`
  (:class:`NoModelError`, :class:`BadImageError`) from `Agent.predict`.

Everything else (the state machine, slots, downloads, events, the error policy) is internal: import
it from its module (`device_agent.errors`, `device_agent.policy` …) and expect it to change.

    agent = Agent(AgentConfig(server=..., model="shapes", model_dir=Path("/var/lib/ota"), trust=...))
    asyncio.run(agent.run())          # in one thread …
    agent.predict(open("cat.jpg", "rb").read())   # … and from any other
"""

from .agent import Agent
from .cli import main
from .config import AgentConfig
from .errors import (
    AgentError,
    BadImageError,
    DirectoryLockedError,
    EnrollmentError,
    InferenceError,
    NoModelError,
)
from .serve import InferenceServer
from .simulate import FleetOptions, FleetReport, run_fleet

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "BadImageError",
    "DirectoryLockedError",
    "EnrollmentError",
    "FleetOptions",
    "FleetReport",
    "InferenceError",
    "InferenceServer",
    "NoModelError",
    "main",
    "run_fleet",
]
