"""The fleet simulator: many devices, each with its own enrollment and storage, moving together."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import artifact as A
from device_agent import FleetOptions, run_fleet
from device_agent.cli import main
from device_agent.runtime import LoadedModel
from device_agent.simulate import format_report

from .fakeserver import SECRET, FakeServer
from .models import MODEL, Release, make_release


def _options(server: FakeServer, key: A.SigningKey, root: Path, until: int) -> FleetOptions:
    return FleetOptions(
        server=server.url,
        model=MODEL,
        enroll_secret=SECRET,
        devices=6,
        trust=A.TrustPolicy.of([key.verify_key]),
        model_dir=root,
        until_version=until,
        timeout=30,
        poll_interval=0.1,
        concurrency=8,
    )


def test_fleet_moves_to_each_target_version_over_deltas(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, tmp_path: Path
) -> None:
    server.publish(releases[1])
    out = io.StringIO()
    first = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 1), out))
    assert first.ok and first.versions == {"v1": 6} and first.reached == 6
    assert first.bytes["delta"] == 0 and first.bytes["full"] == 6 * len(releases[1].payload)
    assert len(server.enrollments) == 6 and len(set(server.tokens.values())) == 6

    server.publish(releases[2])
    second = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 2), out))
    assert second.ok and second.versions == {"v2": 6} and second.failed == {}
    assert second.bytes["full"] == 0 and 0 < second.bytes["delta"] < second.full_payload_bytes
    assert len(server.enrollments) == 6  # the same devices, with their stored tokens
    assert len(server.events_of("installed", 2)) == 6
    assert len({e["device_id"] for e in server.events_of("installed", 2)}) == 6
    assert "fleet 6 devices | v2: 6" in out.getvalue()


def test_fleet_reports_a_refused_version_instead_of_waiting_forever(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, tmp_path: Path
) -> None:
    server.deltas = False
    server.publish(releases[1])
    server.blob_override[releases[1].payload_sha] = releases[1].payload[:-1] + b"!"
    report = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 1), io.StringIO()))
    assert not report.ok and report.failed == {"hash_mismatch": 6} and report.versions == {"none": 6}


def test_simulate_command_prints_a_summary_and_exits_zero_on_success(
    server: FakeServer, releases: dict[int, Release], trust_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.publish(releases[1])
    argv = ["simulate", "--server", server.url, "--model", MODEL, "--enroll-secret", SECRET, "--devices", "3"]
    argv += ["--trust", str(trust_file), "--until-version", "1", "--timeout", "30", "--poll-interval", "0.1", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["versions"] == {"v1": 3} and summary["devices"] == 3


def chain_classifier(depth: int, seed: int, sharpness: float, width: int = 256, size: int = 8) -> bytes:
    """A 3-class MLP on 1×3×size×size inputs whose cost grows with `depth` (MatMul + Tanh layers) and
    whose confidence grows with `sharpness` (the scale of its logits)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Flatten", ["input"], ["h0"])]
    weights = []
    fan_in = 3 * size * size
    for i in range(depth):
        weights.append(
            numpy_helper.from_array(
                (rng.standard_normal((fan_in, width)) / np.sqrt(fan_in)).astype(np.float32), f"w{i}"
            )
        )
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]),
        ]
        fan_in = width
    weights.append(
        numpy_helper.from_array(
            (rng.standard_normal((fan_in, 3)) * sharpness / np.sqrt(fan_in)).astype(np.float32), "out"
        )
    )
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "out"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def seeded_release(version: int, key: A.SigningKey, model: bytes) -> tuple[Release, list[float]]:
    """A release whose golden set is 8 seeded inputs, and the top-1 softmax score the model gives each."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    cases, confidences = [], []
    for seed in range(8):
        (logits,) = session.run(None, {"input": A.seeded_input(seed, (1, 3, 8, 8))})
        row = np.asarray(logits[0], dtype=np.float64)
        cases.append({"seed": seed, "logits": [float(v) for v in row], "top1": int(np.argmax(row))})
        probs = np.exp(row - row.max())
        confidences.append(float(probs.max() / probs.sum()))
    return make_release(version, [key], onnx_bytes=model, golden={"tolerance": 1e-4, "cases": cases}), confidences


def test_simulated_devices_report_the_latency_and_confidence_their_model_really_has(
    server: FakeServer, key: A.SigningKey, tmp_path: Path
) -> None:
    """Half the fleet runs a model with 4× the compute of the other's, side by side in one run: the
    `metrics` events must show it slower, and report the confidence each model really answers with."""
    fast, fast_confidences = seeded_release(1, key, chain_classifier(depth=4, seed=1, sharpness=6.0))
    slow, slow_confidences = seeded_release(2, key, chain_classifier(depth=16, seed=2, sharpness=1.0))
    confidence = {1: statistics.fmean(fast_confidences), 2: statistics.fmean(slow_confidences)}
    assert abs(confidence[1] - confidence[2]) > 0.05  # else the confidence check below could not tell them apart
    server.deltas = False
    server.publish(fast)
    server.publish(slow)
    server.target_of = lambda device_id: 1 if int(device_id[-4:]) % 2 else 2
    options = replace(
        _options(server, key, tmp_path / "fleet", 1),
        devices=4,
        until_version=None,
        timeout=5,
        inference_rate=100,
        metrics_interval=0.5,
    )
    report = asyncio.run(run_fleet(options, io.StringIO()))
    assert report.telemetry is not None

    metrics = server.events_of("metrics")
    on = {v: [e for e in metrics if e["version"] == v] for v in (1, 2)}
    assert on[1] and on[2], "both versions reported"
    assert {e["device_id"] for e in on[1]} <= {"sim-0001", "sim-0003"}  # each from the devices that run it
    assert {e["device_id"] for e in on[2]} <= {"sim-0002", "sim-0004"}
    p95 = {v: statistics.median(e["metrics"]["p95_ms"] for e in events) for v, events in on.items()}
    assert p95[2] / p95[1] > 1.3, p95
    # each device cycles through its model's golden inputs: over the run, the mean of their confidences
    for v, cases in ((1, fast_confidences), (2, slow_confidences)):
        assert all(min(cases) - 1e-6 <= e["metrics"]["mean_confidence"] <= max(cases) + 1e-6 for e in on[v])
        served = sum(e["metrics"]["requests"] for e in on[v])
        assert sum(e["metrics"]["mean_confidence"] * e["metrics"]["requests"] for e in on[v]) / served == pytest.approx(
            confidence[v], abs=0.01
        )
    assert all(0 < e["metrics"]["p50_ms"] <= e["metrics"]["p95_ms"] for e in metrics)
    # every inference served is in exactly one event, the last window included
    assert sum(e["metrics"]["requests"] for e in metrics) == report.telemetry["served"] > 0, report.telemetry
    summary = format_report(report)
    assert "inferences" in summary and "v2              p50" in summary


def test_time_a_simulated_device_waits_off_the_cpu_is_not_its_model_s_latency(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet shares one host: an inference thread waiting for the GIL or a core (here: sleeping 50 ms
    after each run) is the host's load, the same for every version, and must not be reported as the
    model's latency — it would hide a model twice as slow as its baseline from the latency gate."""
    original = LoadedModel.run

    def run_then_wait(self: LoadedModel, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = original(self, x)
        time.sleep(0.05)
        return out

    monkeypatch.setattr(LoadedModel, "run", run_then_wait)
    server.publish(releases[1])
    options = replace(
        _options(server, key, tmp_path / "fleet", 1),
        devices=2,
        until_version=None,
        timeout=3,
        inference_rate=20,
        metrics_interval=0.5,
    )
    asyncio.run(run_fleet(options, io.StringIO()))
    metrics = server.events_of("metrics", 1)
    assert metrics and all(e["metrics"]["p95_ms"] < 50 for e in metrics), [e["metrics"] for e in metrics]


def test_without_an_inference_rate_the_fleet_serves_nothing_and_reports_no_metrics(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, tmp_path: Path
) -> None:
    server.publish(releases[1])
    report = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 1), io.StringIO()))
    assert report.ok and report.telemetry is None
    assert server.events_of("metrics") == []


def test_simulate_command_takes_a_rate_and_reports_what_was_served(
    server: FakeServer, releases: dict[int, Release], trust_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.publish(releases[1])
    argv = ["simulate", "--server", server.url, "--model", MODEL, "--enroll-secret", SECRET, "--devices", "2"]
    argv += ["--trust", str(trust_file), "--timeout", "2", "--poll-interval", "0.1", "--json"]
    assert main([*argv, "--inference-rate", "20", "--metrics-interval", "0.3", "--inference-workers", "1"]) == 0
    telemetry = json.loads(capsys.readouterr().out)["telemetry"]
    assert telemetry["served"] > 0 and telemetry["workers"] == 1 and telemetry["asked_per_s"] == 40
    assert telemetry["versions"]["v1"]["requests"] == telemetry["served"]
    assert sum(e["metrics"]["requests"] for e in server.events_of("metrics", 1)) == telemetry["served"]


def test_sigterm_ends_a_fleet_without_a_target_and_it_still_prints_its_summary(
    server: FakeServer, releases: dict[int, Release], trust_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` runs the fleet through several rollouts and stops it with SIGTERM to read its report."""
    server.publish(releases[1])

    def terminate_once_installed() -> None:
        deadline = time.monotonic() + 60
        while len(server.events_of("installed", 1)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    argv = ["simulate", "--server", server.url, "--model", MODEL, "--enroll-secret", SECRET, "--devices", "2"]
    argv += ["--trust", str(trust_file), "--timeout", "600", "--poll-interval", "0.1", "--json"]
    killer = threading.Thread(target=terminate_once_installed)
    killer.start()
    code = main(argv)
    killer.join()
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"] and summary["versions"] == {"v1": 2}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone with the fleet


@pytest.mark.parametrize(
    "flag", [["--inference-rate", "-1"], ["--metrics-interval", "0"], ["--inference-workers", "0"]]
)
def test_simulate_command_refuses_a_meaningless_rate(
    flag: list[str], trust_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--server", "http://127.0.0.1:9", "--model", MODEL, "--enroll-secret", SECRET]
    argv += ["--devices", "1", "--trust", str(trust_file), *flag]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses the value itself
        code = int(e.code or 0)
    assert code == 2
    assert flag[0] in capsys.readouterr().err
