"""docker-compose.yml, .env.example and the Dockerfile agree with the code they deploy.

No Docker engine runs here: these tests read the files as Compose does (tests/server/deployment.py)
and hold them to the server's settings, its command line, its routes, the device agent's command
line and the packaging extras. test_deployment_start.py then starts the same configuration natively.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import device_agent.cli as agent_cli
from server import Settings, create_app
from server.cli import build_parser
from server.config import load_settings
from server.errors import ConfigurationError

from .deployment import (
    DOCKERFILE,
    REPO,
    InterpolationError,
    container_ports,
    env_example,
    env_lines,
    host_port,
    load_compose,
    service_environment,
    setting_variables,
    unpinned_images,
    volume_map,
)

AGENT_VARIABLES = {agent_cli.SECRET_ENV}  # the device agent reads this one (and it is a server setting too)
COMPOSE_VARIABLES = {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "FORWARDED_ALLOW_IPS"}


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    return env_example(strong_secrets=True)


@pytest.fixture(scope="module")
def compose(dotenv: dict[str, str]) -> dict[str, Any]:
    return load_compose(dotenv)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a server process started with exactly this environment would build."""
    import os

    for name in list(os.environ):
        if name.startswith("OTA_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "migrate", "server", "fleet"}
    assert services["postgres"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"  # one-shot
    assert services["server"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert "minio" in services["server"]["depends_on"]
    assert services["fleet"]["depends_on"] == {"server": {"condition": "service_healthy"}}


def test_migrate_and_serve_use_real_commands_and_the_health_check_a_real_route(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    migrate = build_parser().parse_args(services["migrate"]["command"][1:])
    assert services["migrate"]["command"][0] == "ota-server" and migrate.command == "migrate"

    command = services["server"]["command"]
    serve = build_parser().parse_args(command[1:])
    assert command[0] == "ota-server" and serve.command == "serve"
    assert serve.workers == 2 and serve.migrate is False  # the migrate job ran it once; serve only checks
    assert serve.host == "0.0.0.0"
    assert serve.port in container_ports(compose, "server")

    probe = services["server"]["healthcheck"]["test"]
    assert probe[0] == "CMD" and probe[1] == "ota-server"
    health = build_parser().parse_args(probe[2:])
    assert health.command == "healthcheck"
    host, port = host_port(health.url)
    assert (host, port) == ("127.0.0.1", serve.port)  # inside the container, the port serve listens on
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", storage_url=f"file://{tmp_path}"))
    paths = app.openapi()["paths"]
    assert "get" in paths[health.url.split(f":{port}", 1)[1]]
    assert health.url.endswith("/readyz")  # database and storage, not only "the process runs"


def test_every_image_is_pinned_to_a_release(compose: dict[str, Any]) -> None:
    assert unpinned_images(compose) == [], "pin these images to a release tag (or a digest)"
    assert compose["services"]["minio"]["image"].startswith("minio/minio:RELEASE.")
    # the check itself: an image without a tag, or with `latest`, fails it; a registry port is no tag
    for image in ("minio/minio", "minio/minio:latest", "registry.local:5000/minio/minio", ""):
        unpinned = {"services": {**compose["services"], "minio": {**compose["services"]["minio"], "image": image}}}
        assert unpinned_images(unpinned) == [f"minio: {image or '(none)'}"], image
    digest = "minio/minio@sha256:" + "0" * 64
    assert unpinned_images({"services": {"minio": {"image": digest}, "db": {"image": "host:5000/pg:16"}}}) == []


def test_migrate_job_and_server_get_the_same_configuration(compose: dict[str, Any], dotenv: dict[str, str]) -> None:
    assert service_environment(compose, "migrate", dotenv) == service_environment(compose, "server", dotenv)
    assert volume_map(compose, "migrate") == volume_map(compose, "server")


def test_server_environment_is_known_and_complete_for_production(
    compose: dict[str, Any], dotenv: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = service_environment(compose, "server", dotenv)
    unknown = {name for name in env if name.startswith("OTA_")} - setting_variables()
    assert not unknown, f"the server reads no such setting (typo?): {sorted(unknown)}"
    settings = settings_from(env, monkeypatch)  # production mode: refuses anything missing or weak
    assert settings.env == "production"

    assert host_port(settings.database_url, 5432) == ("postgres", 5432)
    assert settings.database_url.startswith("postgresql+psycopg://ota:")
    assert settings.storage_url.startswith("s3://")
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]  # boto3 reads these for s3://
    minio_port = int(compose["services"]["minio"]["command"][-1].lstrip(":")) - 1  # console 9001, API 9000
    assert settings.s3_endpoint_url is not None
    assert host_port(settings.s3_endpoint_url) == ("minio", minio_port)
    assert minio_port in container_ports(compose, "minio")
    mounts = volume_map(compose, "server")
    for key in settings.publisher_keys:
        assert any(str(key).startswith(target + "/") for target in mounts), f"{key} is not in a mounted volume"


def test_fleet_reaches_the_server_and_its_blobs_and_trusts_the_publisher_key(
    compose: dict[str, Any], dotenv: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    command = services["fleet"]["command"]
    assert command[0] == "device-agent"
    fleet = agent_cli.build_parser().parse_args(command[1:])
    assert fleet.command == "simulate" and fleet.devices > 0

    serve = build_parser().parse_args(services["server"]["command"][1:])
    assert host_port(fleet.server) == ("server", serve.port)
    server_env = service_environment(compose, "server", dotenv)
    settings = settings_from(server_env, monkeypatch)
    # the URLs the server hands out must be reachable from the fleet's container, by service name
    assert settings.public_url is not None and host_port(settings.public_url) == ("server", serve.port)
    assert settings.s3_public_endpoint_url is not None
    assert host_port(settings.s3_public_endpoint_url) == host_port(str(settings.s3_endpoint_url))

    fleet_env = service_environment(compose, "fleet", dotenv)
    assert set(fleet_env) == AGENT_VARIABLES  # the fleet gets the enrollment secret and nothing else
    assert fleet_env[agent_cli.SECRET_ENV] == settings.enrollment_secret.get_secret_value()
    assert [str(p) for p in fleet.trust] == [str(p) for p in settings.publisher_keys]
    assert volume_map(compose, "fleet")["/keys"] == volume_map(compose, "server")["/keys"]


def test_placeholders_shipped_in_env_example_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = env_example(strong_secrets=False)
    compose = load_compose(shipped)
    env = service_environment(compose, "server", shipped)
    with pytest.raises(ConfigurationError) as refused:
        settings_from(env, monkeypatch)
    for name in ("OTA_ADMIN_TOKEN", "OTA_ENROLLMENT_SECRET", "OTA_SECRET_KEY", "OTA_METRICS_TOKEN"):
        assert f"{name} is a placeholder" in str(refused.value)


def test_compose_refuses_to_start_without_the_secrets() -> None:
    without = env_example(strong_secrets=True)
    del without["OTA_SECRET_KEY"]
    with pytest.raises(InterpolationError, match=r"OTA_SECRET_KEY: set OTA_SECRET_KEY in \.env"):
        load_compose(without)


def _shown(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return "" if default is None or default == [] else str(default)


def test_env_example_documents_every_setting_with_its_default() -> None:
    lines = env_lines()
    documented = {name for _, _, name, _ in lines}
    missing = setting_variables() - documented
    assert not missing, f".env.example does not document {sorted(missing)}: add a commented line for each"
    stale = documented - setting_variables() - COMPOSE_VARIABLES - AGENT_VARIABLES
    assert not stale, f".env.example documents variables nothing reads: {sorted(stale)}"
    assert len(documented) == len(lines), "a variable is listed twice"

    text = (REPO / ".env.example").read_text().splitlines()
    for number, active, name, value in lines:
        above = number - 2
        while re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", text[above]):  # a group of variables shares a comment
            above -= 1
        assert text[above].startswith("#") and len(text[above]) > 3, f"{name} has no comment above it"
        field = name.removeprefix("OTA_").lower()
        if not active and field in Settings.model_fields:
            assert value == _shown(field), f"{name}: the default shown is not the code's"


def _closure(extras: set[str]) -> set[str]:
    """Names of every distribution `pip install '.[extras]'` would install (from installed metadata)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.name == project["name"]:  # `ota-models[server,...]` self-references
            for extra in req.extras:
                todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return seen


def test_image_installs_only_server_and_agent_and_cannot_pull_torch() -> None:
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install ([^\n&\\]+)", text)
    assert len(installs) == 1, installs
    extras = re.findall(r"'\.\[([a-z,]+)\]'", installs[0])
    assert extras == ["server,agent"], installs[0]
    assert "--constraint /tmp/no-torch.txt" in installs[0] and "echo 'torch<0' > /tmp/no-torch.txt" in text
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
    assert not any("model_builder" in c and not c.endswith("__init__.py") for c in copied), copied

    assert "torch" not in _closure({"server", "agent"})
    assert "torch" in _closure({"builder"})  # the walk does find torch where it is
