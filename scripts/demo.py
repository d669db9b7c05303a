"""`make demo`: the whole OTA slice on embedded defaults (SQLite, local blob storage).

  1. generate the shapes data set and train SqueezeNet 1.1 v1 (progress shown)
  2. make a signing key, package and sign v1
  3. start the server, publish v1
  4. start one real device agent serving /predict, and a simulated fleet
  5. fine-tune v2 (classifier only), package, publish; watch the fleet move to v2 over deltas
  6. print a summary; keep everything running until Ctrl-C (or exit at once with DEMO_EXIT=1)

Knobs (environment): DEMO_DIR (./demo-data), DEMO_PORT (8000), DEMO_FLEET (50), DEMO_PER_CLASS,
DEMO_EPOCHS (v1), DEMO_FT_EPOCHS (v2), DEMO_IMAGE_SIZE, DEMO_EXIT. Every process it starts, it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "shapes"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


class DemoError(Exception):
    pass


class Processes:
    """Every background process the demo starts; all are stopped on exit, whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, stdout: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        out = stdout.open("wb") if stdout else log
        proc = subprocess.Popen(argv, stdout=out, stderr=log, env={**os.environ, **(env or {})}, start_new_session=True)
        self.running.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.running):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, text=True, **kw)
    if result.returncode != 0:
        raise DemoError(f"step failed ({result.returncode}): {' '.join(argv)}\n{result.stderr or ''}")
    return result


def wait_for(what: str, check: Callable[[], bool], timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.running:
            if proc.poll() is not None and proc.returncode != 0 and name != "fleet":
                raise DemoError(f"{name} exited with status {proc.returncode}; see {procs.logs / (name + '.log')}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def roll_out_now(url: str, admin: str, version: int) -> None:
    """An immediate rollout (one stage of 100 %, no soak, no gates): the version becomes the baseline at once."""
    body = {"model": MODEL, "version": version, "stages": [{"percent": 100, "soak_seconds": 0}], "min_devices": 0}
    r = httpx.post(f"{url}/v1/rollouts", json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"rolling out v{version} failed: {r.status_code} {r.text}")


def free_port(preferred: int) -> int:
    """`preferred` if it is free (0: any), else one the kernel picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free TCP port on 127.0.0.1")


class PredictLoad(threading.Thread):
    """A client sending /predict continuously, counting every answer that is not a 200."""

    def __init__(self, url: str, image: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.image = url, image
        self.ok = self.failed = 0
        self.versions: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, content=self.image, headers={"Content-Type": "image/png"})
                    if r.status_code == 200:
                        self.ok += 1
                        self.versions.add(int(r.json()["version"]))
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1


def main() -> int:
    work = Path(os.environ.get("DEMO_DIR", ROOT / "demo-data")).resolve()
    fleet_size = env_int("DEMO_FLEET", 50)
    epochs, ft_epochs = env_int("DEMO_EPOCHS", 30), env_int("DEMO_FT_EPOCHS", 2)
    exit_after = os.environ.get("DEMO_EXIT") == "1"
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    procs = Processes(work / "logs")
    mb = [str(BIN / "model-builder")]
    started = time.monotonic()
    try:
        say(f"1/6 generating the shapes data set and training v1 ({epochs} epochs) in {work}")
        dataset = [*mb, "make-dataset", "shapes", "--out", str(work / "data"), "--seed", "0"]
        if os.environ.get("DEMO_PER_CLASS"):
            dataset += ["--per-class", os.environ["DEMO_PER_CLASS"]]
        size = os.environ.get("DEMO_IMAGE_SIZE")
        if size:
            dataset += ["--size", size]
        run(dataset)
        train = [*mb, "train", "--data", str(work / "data"), "--epochs", str(epochs), "--seed", "0"]
        if size:
            train += ["--image-size", size]
        run([*train, "--out", str(work / "run-v1")])

        say("2/6 signing key, package v1")
        run([*mb, "keygen", "--out", str(work / "keys")])
        key, pub = work / "keys" / "signing.key", work / "keys" / "signing.pub"
        package = [*mb, "package", "--name", MODEL, "--key", str(key)]
        run([*package[:2], str(work / "run-v1"), *package[2:], "--version", "1", "--out", str(work / "shapes-v1.otam")])

        say("3/6 starting the server (SQLite, local storage) and publishing v1")
        port = free_port(env_int("DEMO_PORT", 8000))
        url = f"http://127.0.0.1:{port}"
        admin, enroll = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        server_env = {
            "OTA_DATABASE_URL": f"sqlite:///{work / 'ota.db'}",
            "OTA_STORAGE_URL": f"file://{work / 'blobs'}",
            "OTA_ADMIN_TOKEN": admin,
            "OTA_ENROLLMENT_SECRET": enroll,
            "OTA_PUBLISHER_KEYS": str(pub),
            "OTA_POLL_INTERVAL": "2",
        }
        procs.start("server", [str(BIN / "ota-server"), "serve", "--port", str(port)], server_env)
        wait_for("the server to be ready", lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 60, procs)
        run([*mb, "publish", str(work / "shapes-v1.otam"), "--server", url, f"--token={admin}", "--quiet"])
        roll_out_now(url, admin, 1)

        say(f"4/6 starting a device agent serving /predict and a simulated fleet of {fleet_size}")
        agent_port = free_port(port + 1)
        procs.start("agent", [
            str(BIN / "device-agent"), "run", "--server", url, "--model", MODEL, "--model-dir", str(work / "device-1"),
            "--trust", str(pub), f"--enroll-secret={enroll}", "--device-id", "demo-device-1",
            "--serve", f"127.0.0.1:{agent_port}", "--poll-interval", "1",
        ])  # fmt: skip
        fleet_report = work / "fleet-report.json"
        fleet = procs.start("fleet", [
            str(BIN / "device-agent"), "simulate", "--server", url, "--model", MODEL, "--trust", str(pub),
            f"--enroll-secret={enroll}", "--devices", str(fleet_size), "--until-version", "2", "--timeout", "1800",
            "--poll-interval", "2", "--model-dir", str(work / "fleet"), "--json",
        ], stdout=fleet_report)  # fmt: skip
        predict = f"http://127.0.0.1:{agent_port}"
        headers = {"Authorization": f"Bearer {admin}"}

        def fleet_on(version: int, count: int) -> bool:
            data = httpx.get(f"{url}/v1/fleet", headers=headers, timeout=5).json()
            on = sum(
                _count_on(entry, version) for entry in (data if isinstance(data, list) else data.get("models", []))
            )
            return on >= count

        def agent_on(version: int) -> bool:
            return httpx.get(f"{predict}/status", timeout=2).json().get("version") == version

        wait_for("the device agent to serve v1", lambda: agent_on(1), 300, procs)
        wait_for(f"{fleet_size} simulated devices to run v1", lambda: fleet_on(1, fleet_size + 1), 600, procs)
        sample = next((work / "data" / "val").rglob("*.png")).read_bytes()
        load = PredictLoad(f"{predict}/predict", sample)
        load.start()

        say(f"5/6 fine-tuning v2 (classifier only, {ft_epochs} epochs), publishing it, watching the fleet move")
        run([*train[:-2], "--epochs", str(ft_epochs), "--init", str(work / "run-v1"), "--freeze-features",
             "--lr", "3e-4", "--seed", "1", "--out", str(work / "run-v2")])  # fmt: skip
        run([*package[:2], str(work / "run-v2"), *package[2:], "--version", "2", "--parent-version", "1",
             "--out", str(work / "shapes-v2.otam")])  # fmt: skip
        run([*mb, "publish", str(work / "shapes-v2.otam"), "--server", url, f"--token={admin}", "--quiet"])
        roll_out_now(url, admin, 2)
        wait_for("the device agent to serve v2", lambda: agent_on(2), 300, procs)
        wait_for(f"{fleet_size} simulated devices to run v2", lambda: fleet_on(2, fleet_size + 1), 900, procs)
        fleet.wait(120)
        time.sleep(1.0)
        load.stop.set()
        load.join(15)

        say("6/6 summary")
        summary = _summary(work, url, headers, load, fleet_report, time.monotonic() - started)
        print(summary["text"], flush=True)
        ok = load.failed == 0 and summary["fleet_ok"]
        if exit_after:
            return 0 if ok else 1
        print(f"\nEverything keeps running: server {url} (admin token {admin}), device {predict}/status.")
        print(f"Ops dashboard: open {url}/ and sign in with the admin token {admin}")
        print("Press Ctrl-C to stop every process the demo started.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0 if ok else 1
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()


def _count_on(entry: dict[str, Any], version: int) -> int:
    if entry.get("model") not in (None, MODEL):
        return 0
    versions = entry.get("versions") or entry.get("by_version") or {}
    if isinstance(versions, dict):
        return int(versions.get(str(version), 0))
    return sum(int(v.get("devices", v.get("count", 0))) for v in versions if v.get("version") == version)


def _summary(
    work: Path, url: str, headers: dict[str, str], load: PredictLoad, fleet_report: Path, elapsed: float
) -> dict[str, Any]:
    import artifact as A

    def manifest(path: Path) -> A.Manifest:
        return A.parse_manifest(A.read_artifact(path.read_bytes()).manifest_bytes)

    v1, v2 = manifest(work / "shapes-v1.otam"), manifest(work / "shapes-v2.otam")
    p1, p2 = (
        A.read_artifact((work / "shapes-v1.otam").read_bytes()),
        A.read_artifact((work / "shapes-v2.otam").read_bytes()),
    )
    onnx1 = A.decode_payload(p1.payload, encoding=v1.payload.encoding, max_length=v1.onnx.length)
    onnx2 = A.decode_payload(p2.payload, encoding=v2.payload.encoding, max_length=v2.onnx.length)
    delta = A.make_delta(onnx1, onnx2)
    report: dict[str, Any] = {}
    with contextlib.suppress(json.JSONDecodeError, OSError):
        report = json.loads(fleet_report.read_text() or "{}")
    size1, size2 = (work / "shapes-v1.otam").stat().st_size, (work / "shapes-v2.otam").stat().st_size
    lines = [
        f"accuracy        v1 {v1.metrics['accuracy']:.2%}   v2 {v2.metrics['accuracy']:.2%}",
        f"artifact        v1 {size1:,} B   v2 {size2:,} B",
        f"delta v1→v2     {len(delta):,} B ({len(delta) / v2.payload.length:.1%} of the v2 payload)",
    ]
    if report:
        lines.append(
            f"fleet           {report.get('devices', '?')} devices; bytes {report.get('bytes', {})}; "
            f"without deltas {report.get('full_payload_bytes', '?')} B; swap median {report.get('swap_ms_median')} ms"
        )
    lines += [
        f"predict load    {load.ok:,} requests answered, failed requests = {load.failed}, "
        f"versions seen {sorted(load.versions)}",
        f"server          {url}   (API docs at {url}/docs)",
        f"dashboard       {url}/   (sign in with the admin token {headers['Authorization'].removeprefix('Bearer ')})",
        f"total time      {elapsed:.0f} s",
    ]
    fleet_ok = bool(report.get("ok", True)) if report else False
    return {"text": "\n".join(lines), "fleet_ok": fleet_ok}


if __name__ == "__main__":
    sys.exit(main())
