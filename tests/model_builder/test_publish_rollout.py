"""`publish --rollout`: flags parsed strictly before any upload, the rollout created after it, refusals
explained in one line that says the upload itself went through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import artifact as A
from model_builder.cli import main
from model_builder.errors import PublishError
from model_builder.rollout import (
    RolloutPlan,
    RolloutSpecError,
    create_rollout,
    parse_gate,
    parse_selector,
    parse_stages,
)
from tests.artifact.conftest import manifest_fields, tiny_classifier

from .conftest import OtaStub


@pytest.fixture()
def artifact_file(tmp_path: Path) -> Path:
    model = tiny_classifier()
    payload = A.encode_payload(model)
    data = A.seal_artifact(A.build_manifest(**manifest_fields(model, payload)), payload, [A.generate_key()])
    path = tmp_path / "shapes-v3.otam"
    path.write_bytes(data)
    return path


def _publish(stub: OtaStub, artifact_file: Path, *flags: str) -> int:
    return main(["publish", str(artifact_file), "--server", stub.url, "--token", "adm", "--quiet", *flags])


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "stages"), [("5,25,100", (5, 25, 100)), ("100", (100,)), ("0.5, 10%, 100", (0.5, 10, 100))]
)
def test_stages_parse(text: str, stages: tuple[float, ...]) -> None:
    assert parse_stages(text) == stages


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("5,25", "last --rollout stage must be 100"),
        ("25,5,100", "must increase: 5 comes after 25"),
        ("5,5,100", "must increase"),
        ("0,100", "above 0"),
        ("5,150", "at most 100"),
        ("5,,100", "separated by commas"),
        ("five,100", "must be a number"),
        ("nan,100", "finite"),
    ],
)
def test_bad_stages_are_refused_in_words(text: str, words: str) -> None:
    with pytest.raises(RolloutSpecError, match=words):
        parse_stages(text)


@pytest.mark.parametrize(
    ("text", "gate"),
    [
        ("latency_p95_ratio<=1.5", {"metric": "latency_p95_ratio", "max": 1.5}),
        ("latency_p95_ratio<=1.5@500", {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 500}),
        ("confidence_delta>=-0.05", {"metric": "confidence_delta", "min": -0.05}),
        ("validation_failures<=0", {"metric": "validation_failures", "max": 0}),
    ],
)
def test_gates_parse(text: str, gate: dict[str, Any]) -> None:
    assert parse_gate(text) == gate


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("latency_p95_ratio>=1.5", "latency_p95_ratio takes an upper bound: write latency_p95_ratio<=1.5"),
        ("confidence_delta<=-0.05", "confidence_delta takes a lower bound: write confidence_delta>=-0.05"),
        ("latency_p99_ratio<=2", "unknown --gate metric 'latency_p99_ratio'; the metrics are latency_p95_ratio"),
        ("latency_p95_ratio=1.5", "a --gate reads METRIC<=VALUE"),
        ("latency_p95_ratio<=fast", "must be a number"),
        ("latency_p95_ratio<=1.5@", "@min_samples .* whole number"),
        ("latency_p95_ratio<=1.5@0", "@min_samples .* whole number"),
        ("latency_p95_ratio<=1.5@many", "@min_samples .* whole number"),
    ],
)
def test_bad_gates_are_refused_in_words(text: str, words: str) -> None:
    with pytest.raises(RolloutSpecError, match=words):
        parse_gate(text)


def test_selectors_parse_and_refuse() -> None:
    assert parse_selector("site=north") == ("site", "north")
    for bad in ("site", "=north", "site="):
        with pytest.raises(RolloutSpecError, match="LABEL=VALUE"):
            parse_selector(bad)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--rollout", "25,5"], "must increase"),
        (["--rollout", "5,100", "--gate", "latency_p95_ratio>=2"], "takes an upper bound"),
        (["--gate", "latency_p95_ratio<=1.5"], "--gate only mean something with --rollout"),
        (["--soak", "60", "--no-auto-advance"], "--soak, --no-auto-advance only mean something with --rollout"),
        (["--rollout", "5,100", "--soak", "-1"], "--soak must be 0 or more"),
        (["--rollout", "5,100", "--min-devices", "0"], "--min-devices must be at least 1"),
        (["--rollout", "100", "--selector", "a=1", "--selector", "a=2"], "each --selector label may be given once"),
    ],
)
def test_bad_flags_stop_before_anything_is_uploaded(
    stub: OtaStub, artifact_file: Path, flags: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = _publish(stub, artifact_file, *flags)
    except SystemExit as e:  # argparse's usage error, for a value its type refused
        code = int(e.code or 0)
    assert code == 2
    assert words in capsys.readouterr().err
    assert stub.requests == []


# ------------------------------------------------------------------ against a server


def test_publish_with_a_staged_rollout_uploads_then_creates_it(
    stub: OtaStub, artifact_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--rollout", "5,25,100", "--soak", "600", "--gate", "latency_p95_ratio<=1.5@500"]
    flags += ["--gate", "confidence_delta>=-0.05", "--selector", "site=north", "--min-devices", "20"]
    assert _publish(stub, artifact_file, *flags) == 0
    assert [p for _, p, _, _ in stub.requests] == ["/v1/models/shapes/versions", "/v1/rollouts"]
    _, _, headers, _ = stub.requests[1]
    assert headers["authorization"] == "Bearer adm" and headers["content-type"] == "application/json"
    assert stub.rollouts() == [
        {
            "model": "shapes",
            "version": 3,
            "selector": {"site": "north"},
            "stages": [
                {"percent": 5, "soak_seconds": 600},
                {"percent": 25, "soak_seconds": 600},
                {"percent": 100, "soak_seconds": 0},
            ],
            "gates": [
                {"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 500},
                {"metric": "confidence_delta", "min": -0.05},
            ],
            "auto_advance": True,
            "min_devices": 20,
        }
    ]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "published shapes v3"
    assert out[1].startswith("rollout 7: running, stages 5% → 25% → 100%, soak 600 s, gates latency_p95_ratio<=1.5@500")


def test_rollout_100_is_an_immediate_rollout(
    stub: OtaStub, artifact_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _publish(stub, artifact_file, "--rollout", "100", "--no-auto-advance") == 0
    (body,) = stub.rollouts()
    assert body["stages"] == [{"percent": 100, "soak_seconds": 0}] and body["gates"] == [] and body["selector"] == {}
    assert body["auto_advance"] is False and "min_devices" not in body
    assert "rollout 7: running, stages 100%" in capsys.readouterr().out


def test_without_rollout_nothing_but_the_upload_happens(stub: OtaStub, artifact_file: Path) -> None:
    assert _publish(stub, artifact_file) == 0
    assert stub.uploads() == 1 and stub.rollouts() == []


@pytest.mark.parametrize(
    ("status", "detail", "words"),
    [
        (409, "shapes already has an active rollout (7)", "v3 of shapes cannot be rolled out: shapes already has"),
        (409, "version 3 is revoked", "v3 of shapes cannot be rolled out: version 3 is revoked"),
        (401, "unknown token", "the server did not accept the token: unknown token"),
        (403, "not an admin", "this token may not start rollouts: not an admin"),
        (422, "stages.0.percent: too small", "the server found the rollout invalid: stages.0.percent"),
        (404, "no such endpoint", "the server has no rollouts API"),
        (500, "boom", "the server answered 500: boom; see GET /v1/rollouts?model=shapes"),
    ],
)
def test_a_refused_rollout_says_the_upload_went_through(
    stub: OtaStub, artifact_file: Path, status: int, detail: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.rollout_answer = (status, {"type": "urn:ota:problem:x", "title": "t", "status": status, "detail": detail})
    assert _publish(stub, artifact_file, "--rollout", "10,100") == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("model-builder: error: uploaded v3 of shapes; the rollout was refused: ")
    assert words in line and "Traceback" not in captured.err
    assert "published shapes v3" in captured.out
    assert stub.uploads() == 1 and len(stub.rollouts()) == 1  # not retried: a second create could be a 409


def test_a_connection_lost_mid_request_says_the_rollout_may_exist(
    stub: OtaStub, artifact_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.rollout_answer = None  # the server takes the request and dies before answering
    assert _publish(stub, artifact_file, "--rollout", "100") == 2
    err = capsys.readouterr().err
    assert "uploaded v3 of shapes; the rollout was refused: lost the connection" in err
    assert "may have been created: see GET /v1/rollouts?model=shapes" in err
    assert len(stub.rollouts()) == 1  # not sent twice: a second one could be a 409 against our own


def test_an_unreachable_server_is_retried_then_said_plainly() -> None:
    delays: list[float] = []
    plan = RolloutPlan(percents=(100,))
    with pytest.raises(PublishError, match=r"^cannot reach http://127.0.0.1:9: "):
        create_rollout("http://127.0.0.1:9", "adm", "shapes", 3, plan, retries=2, sleep=delays.append)
    assert len(delays) == 2
