"""The hot swap: no request fails or sees a half-swapped model, and old sessions drain before release."""

from __future__ import annotations

import threading

import pytest

import artifact as A
from device_agent import NoModelError
from device_agent.holder import ModelHolder
from device_agent.runtime import LoadedModel, load_model, validate_golden

from .models import Release, png_bytes, verified


@pytest.fixture(scope="module")
def models(releases: dict[int, Release], key: A.SigningKey) -> dict[int, LoadedModel]:
    return {v: load_model(r.onnx, verified(r, key)) for v, r in releases.items()}


def test_predict_before_any_install_is_refused_as_no_model() -> None:
    with pytest.raises(NoModelError):
        ModelHolder().predict(png_bytes())


def test_request_in_flight_finishes_on_the_old_session(models: dict[int, LoadedModel]) -> None:
    released: list[int] = []
    holder = ModelHolder(on_release=released.append)
    holder.swap(models[1])
    with holder.acquire() as pinned:
        drained = holder.swap(models[2])
        assert drained is not None and not drained.is_set()
        assert pinned.version == 1
        assert pinned.run(A.seeded_input(0, (1, 3, 8, 8))).shape == (1, 3)  # the old session still works
        assert holder.predict(png_bytes())["version"] == 2  # new requests already get the new model
        assert released == []
    assert drained.is_set() and released == [1]


def test_idle_old_model_is_released_at_once(models: dict[int, LoadedModel]) -> None:
    holder = ModelHolder()
    holder.swap(models[1])
    drained = holder.swap(models[2])
    assert drained is not None and drained.is_set()


def test_hot_swap_under_concurrent_load_drops_no_request(models: dict[int, LoadedModel]) -> None:
    holder = ModelHolder()
    holder.swap(models[1])
    image = png_bytes(16)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[set[int]] = [set() for _ in range(4)]

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                seen[i].add(holder.predict(image)["version"])
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for n in range(60):
        holder.swap(models[1 + n % 3])
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert set().union(*seen) <= {1, 2, 3}
    assert holder.metrics.total > 0


def test_golden_set_is_checked_case_by_case(releases: dict[int, Release], key: A.SigningKey) -> None:
    report = validate_golden(load_model(releases[1].onnx, verified(releases[1], key)))
    assert report.cases == 8 and report.max_abs_error <= 1e-4


def test_metrics_window_summarises_and_resets(models: dict[int, LoadedModel]) -> None:
    holder = ModelHolder()
    holder.swap(models[1])
    for _ in range(5):
        holder.predict(png_bytes())
    summary = holder.metrics.take()
    assert summary is not None
    assert summary["requests"] == 5 and 0 < summary["p50_ms"] <= summary["p95_ms"]
    assert 1 / 3 <= summary["mean_confidence"] <= 1
    assert holder.metrics.take() is None
