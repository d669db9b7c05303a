"""`refresh_forever`, the loop behind the registry view, the served trust chain and the rollout controller:
a database that is down is logged and tried again; any other failure is logged with its traceback and
tried again too (only cancelling ends the loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from server.core.loops import refresh_forever
from server.core.seen import flush_forever
from server.errors import DatabaseUnavailableError

log = logging.getLogger("tests.loops")  # outside "ota", whose handlers the CLI replaces


class Stop(BaseException):
    """Ends a loop under test as cancelling would: not an Exception, so never logged and retried."""


class Failing:
    """A refresh or flush that raises each of `errors` in turn, then :class:`Stop`; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        raise Stop


def run_until_stopped(loop: Coroutine[Any, Any, None]) -> None:
    with pytest.raises(Stop):
        asyncio.run(asyncio.wait_for(loop, timeout=30))


def test_a_database_that_is_down_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    refresh = Failing(DatabaseUnavailableError("no answer (1)"), DatabaseUnavailableError("no answer (2)"))
    with caplog.at_level(logging.WARNING, logger=log.name):
        run_until_stopped(refresh_forever(refresh, 0.0, "thing refresh", log=log))
    warned = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert warned == ["thing refresh failed: no answer (1)", "thing refresh failed: no answer (2)"]
    assert refresh.calls == 3


def test_any_other_failure_is_logged_with_its_traceback_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    refresh = Failing(ValueError("stored document 1 does not parse"), ValueError("stored document 2 does not parse"))
    with caplog.at_level(logging.WARNING, logger=log.name):
        run_until_stopped(refresh_forever(refresh, 0.0, "thing refresh", log=log))
    records = [r for r in caplog.records if r.name == log.name]
    assert [r.getMessage() for r in records] == ["thing refresh failed unexpectedly; retrying in 0 s"] * 2
    assert all(r.levelno == logging.ERROR and r.exc_info and "does not parse" in str(r.exc_info[1]) for r in records)
    assert refresh.calls == 3


def test_a_flusher_that_fails_logs_it_and_flushes_again(caplog: pytest.LogCaptureFixture) -> None:
    flush = Failing(DatabaseUnavailableError("no answer"), KeyError("a row it did not expect"))
    with caplog.at_level(logging.WARNING, logger="ota"):
        run_until_stopped(flush_forever(flush, 0.0, "seen"))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("ota")]
    assert messages == ["seen flush failed, will retry: no answer", "seen flush failed unexpectedly, will retry"]
    assert flush.calls == 3
