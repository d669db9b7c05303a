"""The package's public face (httpx's tests/test_exported_members.py): exactly these names, each importable.

A name added to or dropped from `device_agent.__all__` is a change to what users may rely on: it
must be made here too, on purpose. Internals (the state machine, slots, the error policy …) stay
importable from their modules but are not re-exported.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import device_agent

PUBLIC = {
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
}


def test_the_package_exports_exactly_its_public_names() -> None:
    assert set(device_agent.__all__) == PUBLIC
    assert len(device_agent.__all__) == len(PUBLIC)  # no name listed twice


def test_no_internal_name_leaks_into_the_package_namespace() -> None:
    """`from device_agent import Device` must fail: only modules and the public names live there."""
    names = {n for n, v in vars(device_agent).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert names == PUBLIC
    with pytest.raises(ImportError):
        exec("from device_agent import Device")


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_imports_and_is_the_one_its_module_defines(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from device_agent import {name}", namespace)
    value = namespace[name]
    home = importlib.import_module(value.__module__)
    assert home.__name__.startswith("device_agent.")
    assert getattr(home, name) is value


def test_every_exported_error_derives_from_the_agent_error_base() -> None:
    errors = [getattr(device_agent, n) for n in PUBLIC if n.endswith("Error")]
    assert errors and all(issubclass(e, device_agent.AgentError) for e in errors)
