"""Publishing: plain-words answers, retries only where a retry can help, no network for garbage."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import artifact as A
from model_builder.publish import PublishError, publish
from tests.support import manifest_fields, tiny_classifier


@pytest.fixture()
def artifact_file(tmp_path: Path) -> Path:
    model = tiny_classifier()
    payload = A.encode_payload(model)
    data = A.seal_artifact(A.build_manifest(**manifest_fields(model, payload)), payload, [A.generate_key()])
    path = tmp_path / "shapes-v3.otam"
    path.write_bytes(data)
    return path


def _server(*answers: int | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        body = {"detail": f"answer {answer}", "version": 3}
        return httpx.Response(answer, json=body, headers={"Content-Type": "application/problem+json"})

    return httpx.MockTransport(handler), seen


def test_publish_uploads_the_exact_bytes(artifact_file: Path) -> None:
    transport, seen = _server(201)
    result = publish(artifact_file, "http://ota.test/", "tok", transport=transport, progress=False)
    assert result.created and result.status == 201 and "published shapes v3" in result.message
    (request,) = seen
    assert request.url == "http://ota.test/v1/models/shapes/versions"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.content == artifact_file.read_bytes()


def test_republishing_the_same_bytes_is_not_an_error(artifact_file: Path) -> None:
    transport, _ = _server(200)
    result = publish(artifact_file, "http://ota.test", "tok", transport=transport, progress=False)
    assert not result.created and "already published" in result.message


@pytest.mark.parametrize(
    ("status", "words"), [(409, "conflict"), (422, "invalid"), (413, "larger"), (401, "token"), (403, "may not")]
)
def test_refusals_are_explained_and_not_retried(artifact_file: Path, status: int, words: str) -> None:
    transport, seen = _server(status, 201)
    with pytest.raises(PublishError, match=words) as info:
        publish(artifact_file, "http://ota.test", "tok", transport=transport, progress=False, sleep=lambda _s: None)
    assert f"answer {status}" in str(info.value)
    assert len(seen) == 1


def test_server_errors_and_lost_connections_are_retried(artifact_file: Path) -> None:
    transport, seen = _server(503, httpx.ConnectError("refused"), 500, 201)
    delays: list[float] = []
    result = publish(artifact_file, "http://ota.test", "tok", transport=transport, progress=False, sleep=delays.append)
    assert result.created and len(seen) == 4 and len(delays) == 3
    assert delays[0] < delays[2]  # backoff grows
    assert all(r.content == artifact_file.read_bytes() for r in seen)


def test_gives_up_after_the_retries(artifact_file: Path) -> None:
    transport, seen = _server(*([502] * 3))
    with pytest.raises(PublishError, match="gave up after 3 attempts"):
        publish(
            artifact_file, "http://ota.test", "t", retries=2, transport=transport, progress=False, sleep=lambda _s: None
        )
    assert len(seen) == 3


def test_garbage_file_refused_before_any_upload(tmp_path: Path) -> None:
    bad = tmp_path / "x.otam"
    bad.write_bytes(b"definitely not an artifact")
    transport, seen = _server(201)
    with pytest.raises(A.ArtifactFormatError):
        publish(bad, "http://ota.test", "t", transport=transport, progress=False)
    assert seen == []


def test_cli_reports_refusal_in_one_line(artifact_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_builder.cli import main

    code = main(["publish", str(artifact_file), "--server", "http://127.0.0.1:9", "--token", "t", "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model-builder: error: cannot reach http://127.0.0.1:9" in err and "Traceback" not in err
