"""Uploads cost memory and disk only in proportion to what is authentic (issue 12, findings 18 and 24).

The publisher reads an upload from its spool file through a seam it owns (any binary file): these
tests hand it a file that counts the bytes read, to show that a junk signature, a payload of
another length, or a model past ``OTA_MAX_MODEL_BYTES`` is refused before a payload byte is read.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import artifact as A
from server.errors import InvalidArtifactError

from . import helpers
from .conftest import ADMIN, Env, assert_problem

pytestmark = pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)


class CountingFile(io.BytesIO):
    """An artifact file that records how far it was read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return chunk


def _payload_offset(data: bytes) -> int:
    parts = A.read_artifact(data)
    return len(data) - len(parts.payload)


def _publish_direct(client: TestClient, data: bytes) -> tuple[CountingFile, Any]:
    source = CountingFile(data)
    publisher = client.app.state.services.publisher  # type: ignore[attr-defined]
    try:
        result = publisher.publish(model=helpers.MODEL, source=source, length=len(data), publisher="test")
    except InvalidArtifactError as e:
        return source, e
    return source, result


def test_junk_signature_upload_is_refused_without_reading_the_payload(env: Env, client: TestClient) -> None:
    good = env.artifact(1)
    parts = A.read_artifact(good)
    junk = A.Signature(keyid=parts.signatures[0].keyid, sig="A" * 86 + "==")
    data = helpers.reseal(good, signatures=(junk,), payload=parts.payload + b"\0" * (4 << 20))
    source, outcome = _publish_direct(client, data)
    assert isinstance(outcome, InvalidArtifactError) and outcome.reason == "BadSignatureError"
    assert source.furthest <= _payload_offset(data)  # not one payload byte read
    r = client.post("/v1/models/shapes/versions", content=data, headers=ADMIN)
    assert assert_problem(r, 422)["reason"] == "BadSignatureError"


def test_payload_of_another_length_than_signed_is_refused_before_reading_it(env: Env, client: TestClient) -> None:
    good = env.artifact(1)
    data = helpers.reseal(good, payload=A.read_artifact(good).payload + b"\0" * (1 << 20))
    source, outcome = _publish_direct(client, data)
    assert isinstance(outcome, InvalidArtifactError) and outcome.reason == "TooLongError"
    assert source.furthest <= _payload_offset(data)


def test_signed_model_past_max_model_bytes_is_refused_before_decoding(env: Env) -> None:
    client = env.client(max_model_bytes=1024)  # the 8×8 test model decodes to a few KiB
    data = env.artifact(1)
    source, outcome = _publish_direct(client, data)
    assert isinstance(outcome, InvalidArtifactError) and outcome.reason == "ModelTooLargeError"
    assert source.furthest <= _payload_offset(data)
    doc = assert_problem(client.post("/v1/models/shapes/versions", content=data, headers=ADMIN), 422)
    assert "OTA_MAX_MODEL_BYTES" in doc["detail"]
    assert client.get("/v1/models", headers=ADMIN).json() == []


def test_an_authentic_upload_is_still_published_from_the_spool(env: Env, client: TestClient) -> None:
    data = env.artifact(1)
    source, outcome = _publish_direct(client, data)
    assert not isinstance(outcome, InvalidArtifactError) and outcome.created
    assert source.furthest == len(data)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_spooled_bodies_and_blob_temporaries_of_a_killed_server_are_removed_at_start(env: Env) -> None:
    settings = env.settings()
    spool = settings.upload_spool
    blobs = Path(settings.storage_url.removeprefix("file://"))
    dead = _dead_pid()
    spool.mkdir(parents=True)
    (blobs / "ab").mkdir(parents=True)
    leftover_body = spool / f"ota-upload-{dead}-k9x2"
    leftover_blob = blobs / "ab" / f".{'ab' * 32}.{dead}.140000.tmp"
    live_body = spool / f"ota-upload-{os.getpid()}-live"  # a live worker's upload in progress
    other = spool / "notes.txt"  # not ours: never touched
    for path in (leftover_body, leftover_blob, live_body, other):
        path.write_bytes(b"x" * 1000)
    env.client()
    assert not leftover_body.exists() and not leftover_blob.exists()
    assert live_body.exists() and other.exists()


def test_refused_and_cut_off_uploads_leave_no_spool_file(env: Env) -> None:
    client = env.client(max_artifact_bytes=64 * 1024)
    spool = env.settings().upload_spool
    assert_problem(client.post("/v1/models/shapes/versions", content=b"not an artifact", headers=ADMIN), 422)

    def chunks() -> Any:
        for _ in range(100):
            yield b"\0" * 4096

    assert_problem(client.post("/v1/models/shapes/versions", content=chunks(), headers=ADMIN), 413)
    assert client.post("/v1/models/shapes/versions", content=env.artifact(1), headers=ADMIN).status_code == 201
    assert list(spool.iterdir()) == []
