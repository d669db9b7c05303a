"""Shared, session-scoped fixtures: generating and training are the slow parts, so they run once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from model_builder.data import make_shapes_dataset
from model_builder.train import TrainConfig, TrainResult, train

# One thread: bit-reproducible results need a fixed count, and on a busy 2-core machine two
# OpenMP threads can run an order of magnitude slower than one.
THREADS = 1


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real generator at test scale: 10 classes × 4 train / 2 val images at 64 px."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, per_class=4, size=64, seed=0, val_per_class=2)
    return root


@pytest.fixture(scope="session")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes told apart by hue under heavy noise: 20 train / 5 val images each.

    SqueezeNet from scratch needs minutes before it leaves chance on the shapes data (see
    bench/train.py); a short training test needs a signal a few epochs can find.
    """
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 5)):
        for k in range(10):
            a = 2 * np.pi * k / 10
            hue = np.array([np.cos(a), np.cos(a - 2.1), np.cos(a + 2.1)]) * 100 + 128
            folder = root / split / f"hue{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(hue + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:02d}.png")
    return root


def run_training(data: Path, out: Path, **kwargs: object) -> TrainResult:
    threads = torch.get_num_threads()
    try:
        defaults: dict[str, object] = {"epochs": 1, "batch_size": 16, "threads": THREADS, "progress": False}
        cfg = TrainConfig(data=str(data), out=str(out), **{**defaults, **kwargs})  # type: ignore[arg-type]
        return train(cfg, log=lambda _line: None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_run(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A short real training run (6 epochs, a few seconds); export and fine-tuning start from it."""
    return run_training(colours, tmp_path_factory.mktemp("run"), epochs=6, seed=0)


class OtaStub:
    """Just enough of the server on 127.0.0.1: the upload answers 201, `POST /v1/rollouts` answers
    what the test sets (by default 201 with the rollout, as DESIGN.md's contract has it)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.rollout_answer: tuple[int, dict[str, Any]] | None = (201, {"id": 7, "state": "running", "stage": 0})
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                stub.requests.append((self.command, self.path, headers, body))
                if self.path.endswith("/versions"):
                    status, answer = 201, {"model": "shapes", "version": 3}
                elif self.path == "/v1/rollouts" and stub.rollout_answer is None:
                    self.close_connection = True  # no answer at all
                    return
                elif self.path == "/v1/rollouts":
                    status, answer = stub.rollout_answer
                else:
                    status, answer = 404, {"detail": "no such endpoint"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status < 400 else "application/problem+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def rollouts(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, path, _, body in self.requests if path == "/v1/rollouts"]

    def uploads(self) -> int:
        return sum(1 for _, path, _, _ in self.requests if path.endswith("/versions"))


@pytest.fixture()
def stub() -> Iterator[OtaStub]:
    server = OtaStub()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
