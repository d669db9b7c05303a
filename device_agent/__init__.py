"""Device agent: poll, fetch, verify, validate and hot-swap ONNX models; a fleet simulator.

Installs with `pip install .[agent]` alone: it imports `artifact`, onnxruntime, httpx, numpy,
pillow and the standard library, never torch or the server. Everything public is named here.

    agent = Agent(AgentConfig(server=..., model="shapes", model_dir=Path("/var/lib/ota"), trust=...))
    asyncio.run(agent.run())          # in one thread …
    agent.predict(open("cat.jpg", "rb").read())   # … and from any other
"""

from .agent import Agent
from .config import AgentConfig
from .device import Device
from .errors import (
    AgentError,
    AuthError,
    BadImageError,
    CrashLoopError,
    DirectoryLockedError,
    EnrollmentError,
    InferenceError,
    NetworkError,
    NoModelError,
    OfferError,
    PayloadTooLargeError,
    ProtocolError,
    RejectedError,
    ServerBusyError,
    SlotError,
    TransientError,
    ValidationFailedError,
)
from .holder import ModelHolder
from .policy import Backoff, Disposition, Verdict, classify
from .runtime import LoadedModel
from .serve import InferenceServer
from .sessions import LocalRuntime, Runtime, SharedRuntime
from .simulate import FleetOptions, FleetReport, run_fleet
from .state import State

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AuthError",
    "Backoff",
    "BadImageError",
    "CrashLoopError",
    "Device",
    "DirectoryLockedError",
    "Disposition",
    "EnrollmentError",
    "FleetOptions",
    "FleetReport",
    "InferenceError",
    "InferenceServer",
    "LoadedModel",
    "LocalRuntime",
    "ModelHolder",
    "NetworkError",
    "NoModelError",
    "OfferError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RejectedError",
    "Runtime",
    "ServerBusyError",
    "SharedRuntime",
    "SlotError",
    "State",
    "TransientError",
    "ValidationFailedError",
    "Verdict",
    "classify",
    "run_fleet",
]
