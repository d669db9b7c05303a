"""`refresh_forever`, the loop behind the registry view, the served trust chain and the rollout controller:
a database that is down is logged and tried again; any other failure is not swallowed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.core.loops import refresh_forever
from server.errors import DatabaseUnavailableError

log = logging.getLogger("tests.loops")  # outside "ota", whose handlers the CLI replaces


def test_a_database_that_is_down_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def refresh() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise DatabaseUnavailableError(f"no answer ({calls})")
        raise RuntimeError("third run reached")  # ends the loop, which only a database error does not

    with caplog.at_level(logging.WARNING, logger=log.name), pytest.raises(RuntimeError, match="third run reached"):
        asyncio.run(asyncio.wait_for(refresh_forever(refresh, 0.0, "thing refresh", log=log), timeout=30))
    warned = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert warned == ["thing refresh failed: no answer (1)", "thing refresh failed: no answer (2)"]
    assert calls == 3


def test_any_other_failure_ends_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def refresh() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    with caplog.at_level(logging.WARNING, logger=log.name), pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(asyncio.wait_for(refresh_forever(refresh, 0.0, "thing refresh", log=log), timeout=30))
    assert calls == 1 and not [r for r in caplog.records if r.name == log.name]
