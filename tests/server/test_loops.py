"""`refresh_forever`, the loop behind the registry view, the served trust chain and the rollout controller:
a database that is down is logged and tried again; any other failure is logged with its traceback and
tried again too (only cancelling ends the loop)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.core.loops import refresh_forever
from server.core.seen import flush_forever
from server.errors import DatabaseUnavailableError

log = logging.getLogger("tests.loops")  # outside "ota", whose handlers the CLI replaces


class Stop(BaseException):
    """Ends a loop under test as cancelling would: not an Exception, so never logged and retried."""


def test_a_database_that_is_down_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def refresh() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise DatabaseUnavailableError(f"no answer ({calls})")
        raise Stop

    with caplog.at_level(logging.WARNING, logger=log.name), pytest.raises(Stop):
        asyncio.run(asyncio.wait_for(refresh_forever(refresh, 0.0, "thing refresh", log=log), timeout=30))
    warned = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert warned == ["thing refresh failed: no answer (1)", "thing refresh failed: no answer (2)"]
    assert calls == 3


def test_any_other_failure_is_logged_with_its_traceback_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def refresh() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ValueError(f"stored document {calls} does not parse")
        raise Stop

    with caplog.at_level(logging.WARNING, logger=log.name), pytest.raises(Stop):
        asyncio.run(asyncio.wait_for(refresh_forever(refresh, 0.0, "thing refresh", log=log), timeout=30))
    records = [r for r in caplog.records if r.name == log.name]
    assert [r.getMessage() for r in records] == ["thing refresh failed unexpectedly; retrying in 0 s"] * 2
    assert all(r.levelno == logging.ERROR and r.exc_info and "does not parse" in str(r.exc_info[1]) for r in records)
    assert calls == 3


def test_a_flusher_that_fails_logs_it_and_flushes_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def flush() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise DatabaseUnavailableError("no answer")
        if calls == 2:
            raise KeyError("a row it did not expect")
        raise Stop

    with caplog.at_level(logging.WARNING, logger="ota"), pytest.raises(Stop):
        asyncio.run(asyncio.wait_for(flush_forever(flush, 0.0, "seen"), timeout=30))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("ota")]
    assert messages == ["seen flush failed, will retry: no answer", "seen flush failed unexpectedly, will retry"]
    assert calls == 3
