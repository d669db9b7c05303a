"""pipeline (train → compress → package → publish → roll out) and design-space exploration, end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import artifact as A
from model_builder.cli import main
from model_builder.explore import ExploreError, parse_sweep

from .conftest import OtaStub


@pytest.fixture()
def registry() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A real HTTP server on loopback that accepts uploads like the OTA server's publish endpoint."""
    received: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("Authorization", ""), body))
            answer = json.dumps({"model": "shapes", "version": 1}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_pipeline_trains_packages_and_publishes(
    tiny_shapes: Path, tmp_path: Path, registry: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, received = registry
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    code = main([
        "pipeline", "--data", str(tiny_shapes), "--out", str(tmp_path / "run"), "--epochs", "1", "--threads", "1",
        "--no-progress", "--name", "shapes", "--version", "1", "--key", str(tmp_path / "keys" / "signing.key"),
        "--server", url, "--token", "secret-token",
    ])  # fmt: skip
    assert code == 0
    ((path, auth, body),) = received
    assert path == "/v1/models/shapes/versions" and auth == "Bearer secret-token"
    assert body == (tmp_path / "run" / "shapes-v1.otam").read_bytes()
    trust = A.TrustPolicy.of([A.load_public_key(tmp_path / "keys" / "signing.pub")])
    assert A.verify_artifact(body, trust=trust, expected_model="shapes").manifest.version == 1


def test_explore_writes_csv_and_plot(tiny_shapes: Path, tmp_path: Path) -> None:
    code = main([
        "explore", "--data", str(tiny_shapes), "--sweep", "squeeze_ratio=0.125,0.5", "--epochs", "1",
        "--threads", "1", "--no-progress", "--out", str(tmp_path / "x"),
    ])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "x" / "explore.csv").open()))
    assert [float(r["value"]) for r in rows] == [0.125, 0.5]
    assert int(rows[0]["params"]) < int(rows[1]["params"])  # wider squeeze layers, more parameters
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
    assert (tmp_path / "x" / "explore.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("sweep", "words"),
    [("squeeze=0.1,0.2", "NAME=V1"), ("squeeze_ratio=0.5", "at least two"), ("pct_3x3=0.5,1.5", "pct_3x3"),
     ("freq=2,x", "freq")],
)  # fmt: skip
def test_bad_sweeps_are_refused_before_training(sweep: str, words: str) -> None:
    with pytest.raises(ExploreError, match=words):
        parse_sweep(sweep)


def test_pipeline_compresses_signs_publishes_and_rolls_out_the_compressed_model(
    tiny_shapes: Path, tmp_path: Path, stub: OtaStub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    run = tmp_path / "run"
    code = main([
        "pipeline", "--data", str(tiny_shapes), "--out", str(run), "--epochs", "1", "--threads", "1",
        "--no-progress", "--name", "shapes", "--version", "1", "--key", str(tmp_path / "keys" / "signing.key"),
        "--density", "0.5", "--bits", "4", "--finetune-steps", "3", "--max-loss", "100",
        "--server", stub.url, "--token", "adm", "--rollout", "10,100", "--soak", "30",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    body = (run / "shapes-v1.otam").read_bytes()
    assert stub.uploads() == 1 and stub.requests[0][3] == body
    manifest = A.verify_artifact(
        body, trust=A.TrustPolicy.of([A.load_public_key(tmp_path / "keys" / "signing.pub")]), expected_model="shapes"
    ).manifest
    onnx_bytes = (run / "compressed" / "model.onnx").read_bytes()
    assert manifest.onnx.sha256 == hashlib.sha256(onnx_bytes).hexdigest()  # the compressed model is what shipped
    assert manifest.metrics["bits"] == 4 and manifest.metrics["density"] == pytest.approx(0.5, abs=1e-3)
    (rollout,) = stub.rollouts()
    assert rollout["version"] == 1 and [s["percent"] for s in rollout["stages"]] == [10, 100]
    report = json.loads((run / "compressed" / "compression.json").read_text())
    fp32, small = report["size"]["fp32"]["payload_bytes"], report["size"]["compressed"]["payload_bytes"]
    assert small < fp32 / 2
    assert f"| fp32 (trained) | {report['accuracy']['fp32']:.2%} | {fp32:,} |" in out  # each stage: accuracy, size
    assert f"| k-means 4 bits, density 50% (shipped) | {report['accuracy']['final']:.2%} | {small:,} |" in out


def test_pipeline_stops_before_signing_when_compression_loses_too_much(
    colours: Path, tmp_path: Path, stub: OtaStub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    common = [
        "pipeline", "--data", str(colours), "--out", str(tmp_path / "run"), "--threads", "1", "--no-progress",
        "--name", "shapes", "--version", "1", "--key", str(tmp_path / "keys" / "signing.key"),
        "--server", stub.url, "--token", "adm",
    ]  # fmt: skip
    # Nonsense compression flags are refused before any training.
    assert main([*common, "--bits", "9"]) == 2
    assert "--bits must lie between 2 and 8" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # A parent that learned something (6 epochs on the colours), then a cut to 5 % at 2 bits with no fine-tuning.
    harsh = ["--epochs", "6", "--batch-size", "16", "--density", "0.05", "--bits", "2", "--finetune-steps", "0"]
    assert main([*common, *harsh]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("model-builder: error: the compressed model scores") and "\n" not in err
    assert stub.requests == [] and not list((tmp_path / "run").glob("*.otam"))  # nothing signed, nothing uploaded
    assert not (tmp_path / "run" / "compressed").exists()
