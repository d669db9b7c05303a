"""Reading the deployment as Docker Compose would: docker-compose.yml, .env.example, the Dockerfile.

No Docker engine runs on the test machines, so the tests read these files the way Compose does —
variables interpolated (``${X}``, ``${X:-default}``, ``${X:?message}``, ``$$``), YAML anchors and
merge keys, ``env_file`` then ``environment`` — and check the result against the server's own
settings and command line, or start it natively (tests/server/test_deployment_start.py).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from server.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
PLACEHOLDER_PREFIX = "change-me"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_ENV_LINE = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


class InterpolationError(Exception):
    """A `${X:?message}` whose variable is unset: Compose refuses to start with this message."""


def setting_variables() -> set[str]:
    """Every environment variable the server's settings read."""
    return {f"OTA_{name.upper()}" for name in Settings.model_fields}


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """`value` (a YAML tree) with Compose's variable syntax resolved from `variables`."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        current = variables.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"{name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(one, value)


def load_compose(variables: Mapping[str, str]) -> dict[str, Any]:
    tree = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(tree, dict)
    resolved: dict[str, Any] = interpolate(tree, variables)
    return resolved


def env_lines(path: Path = ENV_EXAMPLE) -> list[tuple[int, bool, str, str]]:
    """(line number, active?, name, value) of each `NAME=value` or `# NAME=value` line."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = _ENV_LINE.match(line.strip())
        if m:
            found.append((number, not m["comment"], m["name"], m["value"]))
    return found


def env_example(*, strong_secrets: bool) -> dict[str, str]:
    """The active assignments of .env.example — as an operator's .env would hold them once every
    change-me value is replaced by a random secret (`strong_secrets`), or exactly as shipped."""
    values = {}
    for _, active, name, value in env_lines():
        if active:
            if strong_secrets and value.startswith(PLACEHOLDER_PREFIX):
                value = secrets.token_urlsafe(32)
            values[name] = value
    return values


def service_environment(compose: Mapping[str, Any], service: str, dotenv: Mapping[str, str]) -> dict[str, str]:
    """What a container of `service` gets: its env_file (.env, here `dotenv`), then `environment`."""
    spec = compose["services"][service]
    env: dict[str, str] = {}
    for entry in spec.get("env_file", []) or []:
        path = entry["path"] if isinstance(entry, dict) else entry
        assert path == ".env", f"{service}: only .env is modelled here, not {path}"
        env.update(dotenv)
    environment = spec.get("environment", {}) or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: "" if v is None else str(v) for k, v in environment.items()})
    return env


def volume_map(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    """Bind mounts of `service`: container path → host path (relative to the compose file)."""
    mounts = {}
    for volume in compose["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def container_ports(compose: Mapping[str, Any], service: str) -> dict[int, int]:
    """Published ports of `service`: container port → host port."""
    ports = {}
    for mapping in compose["services"][service].get("ports", []):
        host, container = str(mapping).rsplit(":", 1)[-2:] if ":" in str(mapping) else (mapping, mapping)
        ports[int(container)] = int(str(host).rsplit(":", 1)[-1])
    return ports


def host_port(url: str, default_port: int = 80) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or default_port


def unpinned_images(compose: Mapping[str, Any]) -> list[str]:
    """``service: image`` for every service whose image names no release: no tag, or ``latest``.

    A digest (``@sha256:…``) pins it; otherwise the tag is what follows the last ``:`` after the
    last ``/`` (``host:5000/name`` has no tag)."""
    out = []
    for name, service in compose["services"].items():
        image = str(service.get("image", ""))
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag or tag in ("", "latest"):
            out.append(f"{name}: {image or '(none)'}")
    return out
