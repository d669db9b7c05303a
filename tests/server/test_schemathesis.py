"""The running app against its own OpenAPI, with generated requests (schemathesis, bounded examples).

Admin and device credentials are supplied, so requests reach the routes' logic and not only the
authentication in front of it. What must hold (issue 12): no answer is a 5xx, every error is
``application/problem+json``, and answers match what ``/openapi.json`` declares.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import artifact as A
from server import Settings, create_app, upgrade

from . import helpers
from .conftest import ADMIN, ENROLLMENT_SECRET, IMMEDIATE, truncate_pg

MAX_EXAMPLES = 12  # per operation: the whole module stays well under a minute
# The generator does not honour `propertyNames` (label keys), so it sends "schema-valid" bodies the
# API rightly refuses; whether refusals are right is what test_hostile_input and the route tests assert.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, signing_key: A.SigningKey
) -> Iterator[dict[str, Any]]:
    """A started app (SQLite or PostgreSQL, local blobs) with a rolled-out version and an enrolled device."""
    root: Path = tmp_path_factory.mktemp("schemathesis")
    key_file = root / "publisher.pub.pem"
    A.save_public_key(signing_key, key_file)
    if request.param == "sqlite":
        db = f"sqlite:///{root / 'ota.db'}"
        upgrade(db)
    else:
        db = request.getfixturevalue("pg_url")
        truncate_pg(db)
    app_settings = Settings(
        database_url=db,
        storage_url=f"file://{root / 'blobs'}",
        admin_token=ADMIN["Authorization"].removeprefix("Bearer "),
        enrollment_secret=ENROLLMENT_SECRET,
        secret_key="test-secret-key-0123456789abcdef",
        publisher_keys=[key_file],
        cache_seconds=0.05,
        seen_flush_seconds=0.1,
    )
    app = create_app(app_settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/models/shapes/versions", content=helpers.build_artifact(signing_key, version=1), headers=ADMIN
        )
        assert r.status_code == 201, r.text
        r = client.post("/v1/rollouts", json={"model": "shapes", "version": 1, **IMMEDIATE}, headers=ADMIN)
        assert r.status_code == 201, r.text
        r = client.post(
            "/v1/devices/enroll", json={"enrollment_secret": ENROLLMENT_SECRET, "model": "shapes", "device_id": "cam-1"}
        )
        assert r.status_code == 201, r.text
        yield {"app": app, "device": {"Authorization": f"Bearer {r.json()['token']}"}}


def _problem_on_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 400:
        media = response.headers.get("content-type", [""])
        media = media[0] if isinstance(media, list) else media
        assert media.startswith("application/problem+json"), f"{response.status_code} answered as {media!r}"
    return None


def test_the_api_answers_every_generated_request_as_its_openapi_says(running: dict[str, Any]) -> None:
    api = schemathesis.openapi.from_asgi("/openapi.json", running["app"])
    problem_on_error = schemathesis.check(_problem_on_error)
    failures: list[str] = []
    operations = calls = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1
        device_route = operation.path.startswith(("/v1/device/", "/v1/blobs/"))
        headers = running["device"] if device_route else ADMIN

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                headers=headers,  # noqa: B023 - check() runs at once, within this iteration
                additional_checks=[problem_on_error],
                excluded_checks=EXCLUDED,
            )

        try:
            check()
        except Exception as e:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:1500]}")
    assert operations >= 20 and calls >= 3 * operations
    assert not failures, "\n\n".join(failures)
