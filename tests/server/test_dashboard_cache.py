"""The dashboard's counts: recent enough, never recounted per page load, never older than an action."""

from __future__ import annotations

import time

from server.core.dashboard import Recent


def test_counts_are_served_stale_while_recounted_and_recounted_after_an_action() -> None:
    calls: list[int] = []

    def count() -> int:
        calls.append(1)
        return len(calls)

    recent = Recent(count, fresh=0.05, stale=60)
    assert recent.get().value == 1
    assert recent.get().value == 1  # fresh: not counted again
    time.sleep(0.06)
    assert recent.get().value == 1  # stale: served at once, counted again in the background
    deadline = time.monotonic() + 10
    while recent.get().value != 2:
        assert time.monotonic() < deadline, "the background count never landed"
        time.sleep(0.01)
    recent.expire()  # after an action: served at once, recounted in the background
    assert recent.get().value == 2
    while recent.get().value != 3:
        assert time.monotonic() < deadline, "the background count never landed"
        time.sleep(0.01)
    fresh = Recent(count, fresh=60, stale=120)
    assert fresh.get().value == 4
    assert fresh.get().value == 4  # fresh for a minute ...
    fresh.expire()
    assert fresh.get().value == 4  # ... until expired: the old value once more, while the recount runs
    while fresh.get().value != 5:
        assert time.monotonic() < deadline, "the recount after expire never landed"
        time.sleep(0.01)
