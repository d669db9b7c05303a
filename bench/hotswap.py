"""Benchmark: hot swap under load, with a real agent process serving /predict.

Builds SqueezeNet 1.1 (10 classes, 224 px) and a chain of classifier-only fine-tunes of it (v2, v3,
… each moves the last layer a little, as transfer learning does), packages and signs them with
`model_builder.build_artifact`, and serves them from the real server (`python -m server serve` on
SQLite and file storage in a temporary directory). A real `python -m device_agent run --serve`
process installs them one after another while four client threads POST 224 px JPEGs to /predict
without pause:

  idle      a few installs with no clients: the reference swap time without inference load
  steady    clients only: the steady-state latency
  swaps     clients, while `--versions` successive versions are rolled out, each as soon as the
            previous one serves (a request overlapping any rollout → serving window counts here)

Publishing no longer offers a version, so each step uploads the next version, waits until the server
has built its delta from the previous one (as a fleet's publisher would, and so that every install
downloads a delta), and then creates an immediate rollout (one stage of 100 %, no soak, no
minimum): "published" below is the moment that rollout is created.

It prints a table and a verdict against issue 5's goals: 0 failed requests, p99 during swaps
≤ 2× steady p99, median verified ONNX bytes → serving (golden set included) ≤ 75 ms.

    .venv/bin/python -m bench.hotswap [--versions 50] [--steady 20] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from PIL import Image

import artifact as A
from bench._report import log, write_section
from model_builder import build_artifact, export_bytes, squeezenet1_1
from model_builder.publish import publish

ROOT = Path(__file__).resolve().parent.parent

SIZE = 224
MODEL = "squeezenet-bench"
LABELS = [f"class-{i}" for i in range(10)]
PRE = {"size": SIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}
CLIENTS = 4
GOAL_SWAP_MS = 75.0
GOAL_P99_RATIO = 2.0


# ---------------------------------------------------------------------------------------------- models


def export_v1() -> bytes:
    torch.manual_seed(0)
    return export_bytes(squeezenet1_1(num_classes=len(LABELS)), SIZE)


def fine_tunes(v1: bytes, count: int) -> list[bytes]:
    """v1 and `count` successors, each with the classifier (conv10) nudged: a classifier-only fine-tune."""
    proto = onnx.load_from_string(v1)
    by_name = {t.name: t for t in proto.graph.initializer}
    rng = np.random.default_rng(1)
    out = [v1]
    for _ in range(count):
        for name in ("classifier.1.weight", "classifier.1.bias"):
            tensor = by_name[name]
            w = numpy_helper.to_array(tensor)
            w = (w + rng.normal(0, 0.01, w.shape)).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(w, name))
        out.append(proto.SerializeToString())
    return out


def package(version: int, onnx_bytes: bytes, key: A.SigningKey) -> bytes:
    """A signed artifact; its golden set is 8 seeded inputs, as a device checks before every swap."""
    data, _ = build_artifact(
        onnx_bytes, name=MODEL, version=version, labels=LABELS, preprocess=PRE, metrics={"params": 727626},
        sample_images=[], keys=[key], parent_version=version - 1 if version > 1 else None,
        expires_in=timedelta(days=1), golden_cases=8,
    )  # fmt: skip
    return data


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Sample:
    start: float
    end: float
    ok: bool
    version: int | None


def jpegs() -> list[bytes]:
    out = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(4):
        rgb = np.stack([(xx * (i + 1)) % 256, (yy * (i + 2)) % 256, ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Clients:
    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.newest = 0  # the newest version any response came from: how the bench sees a swap
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, i: int) -> None:
        images = jpegs()
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    r = client.post(f"{self.url}/predict", content=images[(i + n) % len(images)])
                    ok = r.status_code == 200
                    version = r.json().get("version") if ok else None
                    if version is not None and version > self.newest:
                        self.newest = version
                    if not ok:
                        self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    ok, version = False, None
                    self.errors.append(f"{type(e).__name__}: {e}")
                self.samples.append(Sample(start, time.perf_counter(), ok, version))
                n += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/status", timeout=10).json())


def wait_served(clients: Clients, version: int, timeout: float = 60) -> float:
    """When a client first got an answer from `version` (no extra requests: polling /status would load
    the agent during swaps only and skew the comparison with the steady phase)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if clients.newest >= version:
            return time.perf_counter()
        time.sleep(0.002)
    raise RuntimeError(f"no client saw v{version} within {timeout} s")


def wait_version(url: str, version: int, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if status(url).get("version") == version:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"the agent did not serve v{version} within {timeout} s")


# ---------------------------------------------------------------------------------------------- server


class Registry:
    """The real server in a subprocess (SQLite and file storage under `work`), and a publisher's calls to it."""

    def __init__(self, work: Path, key: A.SigningKey) -> None:
        self.work = work
        self.admin = secrets.token_urlsafe(24)
        self.enrollment_secret = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.headers = {"Authorization": f"Bearer {self.admin}"}
        A.save_public_key(key, work / "publisher.pub")
        self.log = work / "server.log"
        self._log_file = self.log.open("wb")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTA_")},
            "OTA_DATABASE_URL": f"sqlite:///{work / 'ota.db'}",
            "OTA_STORAGE_URL": f"file://{work / 'blobs'}",
            "OTA_ADMIN_TOKEN": self.admin,
            "OTA_ENROLLMENT_SECRET": self.enrollment_secret,
            "OTA_SECRET_KEY": secrets.token_urlsafe(24),
            "OTA_PUBLISHER_KEYS": str(work / "publisher.pub"),
            "OTA_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "server", "serve", "--port", self.url.rsplit(":", 1)[1]]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._log_file
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("the server did not become ready within 60 s")

    def upload(self, version: int, data: bytes) -> None:
        """Publish `version` (which offers it to no device) and wait until its delta from the one before is built."""
        path = self.work / f"v{version}.otam"
        path.write_bytes(data)
        publish(path, self.url, self.admin, progress=False)
        if version == 1:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/v1/models/{MODEL}/versions/{version}", headers=self.headers, timeout=10)
            r.raise_for_status()
            delta = next((d for d in r.json()["deltas"] if d["from_version"] == version - 1), None)
            if delta is not None and delta["status"] == "ready":
                return
            if delta is not None and delta["status"] != "pending":
                raise RuntimeError(f"the delta v{version - 1} → v{version} is {delta['status']}")
            time.sleep(0.05)
        raise RuntimeError(f"the server did not build the delta v{version - 1} → v{version} within 60 s")

    def roll_out(self, version: int) -> None:
        """An immediate rollout: it completes at once and `version` becomes the baseline every device is offered."""
        body = {"model": MODEL, "version": version, "stages": [{"percent": 100, "soak_seconds": 0}], "min_devices": 0}
        r = httpx.post(f"{self.url}/v1/rollouts", json=body, headers=self.headers, timeout=30)
        r.raise_for_status()
        if r.json()["state"] != "completed":
            raise RuntimeError(f"the immediate rollout of v{version} did not complete: {r.text[:500]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self._log_file.close()


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=50, help="versions installed under load")
    parser.add_argument("--idle", type=int, default=5, help="versions installed with no clients (reference)")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady-state load")
    parser.add_argument("--threads", type=int, default=1, help="the agent's ONNX Runtime intra-op threads")
    parser.add_argument("--update-niceness", type=int, default=0, help="the agent's --update-niceness")
    parser.add_argument("--quick", action="store_true", help="10 versions, 8 s steady (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.versions, args.idle, args.steady = 10, 3, 8.0

    load_before = os.getloadavg()[0]
    key = A.generate_key()
    log(f"building SqueezeNet 1.1 at {SIZE} px and {args.idle + args.versions} classifier fine-tunes …")
    models = fine_tunes(export_v1(), args.idle + args.versions)
    artifacts = []
    for i, m in enumerate(models):
        artifacts.append(package(i + 1, m, key))
        if (i + 1) % 10 == 0 or i + 1 == len(models):
            log(f"  packaged {i + 1}/{len(models)} artifacts (golden sets computed with ONNX Runtime)")

    with tempfile.TemporaryDirectory(prefix="ota-hotswap-") as tmp:
        registry = Registry(Path(tmp), key)
        agent = None
        try:
            registry.upload(1, artifacts[0])
            registry.roll_out(1)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [
                sys.executable, "-m", "device_agent", "run", "--server", registry.url, "--model", MODEL,
                "--model-dir", str(Path(tmp) / "device"), "--trust", str(Path(tmp) / "publisher.pub"),
                "--serve", f"127.0.0.1:{port}", "--poll-interval", "0.05", "--threads", str(args.threads),
                "--log-level", "WARNING", "--update-niceness", str(args.update_niceness),
            ]  # fmt: skip
            env = {**os.environ, "OTA_ENROLLMENT_SECRET": registry.enrollment_secret}
            agent = subprocess.Popen(command, cwd=ROOT, env=env)
            wait_version(url, 1)
            log("v1 installed (full payload); idle installs …")
            version = 1
            for _ in range(args.idle):
                version += 1
                registry.upload(version, artifacts[version - 1])
                registry.roll_out(version)
                wait_version(url, version)

            clients = Clients(url)
            clients.start()
            time.sleep(2.0)  # warm-up, not counted
            steady_from = time.perf_counter()
            log(f"steady state for {args.steady:.0f} s with {CLIENTS} clients …")
            time.sleep(args.steady)
            steady_to = time.perf_counter()
            windows = []
            log(f"installing {args.versions} versions under load …")
            for n in range(args.versions):
                version += 1
                registry.upload(version, artifacts[version - 1])  # not timed: the offer starts with the rollout
                published = time.perf_counter()
                registry.roll_out(version)
                windows.append((published, wait_served(clients, version) + 0.05))
                if (n + 1) % 10 == 0:
                    log(f"  {n + 1}/{args.versions} installed")
            time.sleep(0.5)
            clients.stop()
            final = status(url)
        finally:
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
            registry.close()

    installs = {i["version"]: i for i in final["installs"]}
    idle_ms = [installs[v]["verified_to_serving_ms"] for v in range(2, 2 + args.idle) if v in installs]
    load_versions = range(2 + args.idle, 2 + args.idle + args.versions)
    load = [installs[v] for v in load_versions if v in installs]
    swap_ms = [i["verified_to_serving_ms"] for i in load]
    session_ms = [i["session_ms"] for i in load]
    golden_ms = [i["golden_ms"] for i in load]
    delta_bytes = [i["bytes"] for i in load]
    publish_to_serving = [(b - a - 0.05) * 1000 for a, b in windows]

    samples = clients.samples
    steady = [s for s in samples if steady_from <= s.start and s.end <= steady_to]
    during = [s for s in samples if any(s.start < b and s.end > a for a, b in windows)]
    failed = [s for s in samples if not s.ok]
    lat = {name: [(s.end - s.start) * 1000 for s in group] for name, group in (("steady", steady), ("swaps", during))}
    p99_steady, p99_swaps = pct(lat["steady"], 99), pct(lat["swaps"], 99)
    median_swap = statistics.median(swap_ms)
    versions_seen = sorted({s.version for s in samples if s.version is not None})

    rows = [
        "| phase | requests | failed | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, group in (("steady", steady), ("during swaps", during)):
        values = lat["steady" if name == "steady" else "swaps"]
        rows.append(
            f"| {name} | {len(group):,} | {sum(not s.ok for s in group)} | {pct(values, 50):.1f} | "
            f"{pct(values, 95):.1f} | {pct(values, 99):.1f} | {max(values):.1f} |"
        )
    swap_rows = [
        "| install timing (median / p90 / max) | ms |",
        "|---|---|",
        f"| verified ONNX bytes → serving, no client load ({len(idle_ms)} installs) | "
        f"{statistics.median(idle_ms):.1f} / {pct(idle_ms, 90):.1f} / {max(idle_ms):.1f} |",
        f"| verified ONNX bytes → serving, under load ({len(swap_ms)} installs) | "
        f"**{median_swap:.1f}** / {pct(swap_ms, 90):.1f} / {max(swap_ms):.1f} |",
        f"| of which: session build | {statistics.median(session_ms):.1f} / {pct(session_ms, 90):.1f} / "
        f"{max(session_ms):.1f} |",
        f"| of which: golden set (8 × 224 px) | {statistics.median(golden_ms):.1f} / {pct(golden_ms, 90):.1f} / "
        f"{max(golden_ms):.1f} |",
        f"| rollout → serving (poll, delta download, verify, swap) | {statistics.median(publish_to_serving):.1f} / "
        f"{pct(publish_to_serving, 90):.1f} / {max(publish_to_serving):.1f} |",
    ]
    checks = [
        (len(failed) == 0, f"failed requests {len(failed)} (goal 0)"),
        (
            p99_swaps <= GOAL_P99_RATIO * p99_steady,
            f"p99 during swaps {p99_swaps:.1f} ms = {p99_swaps / p99_steady:.2f}× steady "
            f"(goal ≤ {GOAL_P99_RATIO:.0f}×)",
        ),
        (median_swap <= GOAL_SWAP_MS, f"median verified→serving {median_swap:.1f} ms (goal ≤ {GOAL_SWAP_MS:.0f} ms)"),
    ]
    verdict = "PASS" if all(ok for ok, _ in checks) else "FAIL"
    summary = "; ".join(("✔ " if ok else "✘ ") + text for ok, text in checks)
    body = "\n".join(
        [
            f"SqueezeNet 1.1, {len(LABELS)} classes, {SIZE} px, fp32 ONNX {len(models[0]):,} bytes; "
            f"{CLIENTS} client threads POST 224 px JPEGs to a real `device-agent run --serve` process "
            f"(ONNX Runtime intra-op threads: {args.threads}, update niceness: {args.update_niceness}) "
            f"while {args.versions} successive classifier "
            f"fine-tunes install over deltas (median {statistics.median(delta_bytes):,.0f} bytes) from the real "
            "server (`ota-server serve`, SQLite, file storage; the agent polls every 50 ms), each uploaded as soon "
            "as the previous one serves and rolled out (an immediate rollout) once the server has built its delta: "
            "rollout → serving is timed from the rollout's creation. Golden set: 8 seeded inputs. "
            "Versions seen by clients: "
            f"{versions_seen[0]}–{versions_seen[-1]}. Load average before / after the run: "
            f"{load_before:.1f} / {os.getloadavg()[0]:.1f} (the machine's other work competes for its cores).",
            "",
            *rows,
            "",
            *swap_rows,
            "",
            f"Verdict: {verdict} — {summary}.",
        ]
    )
    print(body)
    if failed:
        print("\nfirst errors:\n" + "\n".join(clients.errors[:5]))
    if not args.no_write:
        write_section("hotswap", body)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
