"""Load generator and server harness for the HTTP benchmarks (used by bench/poll.py).

The generator runs in its own process (``python bench/_loadgen.py --port … --spec …``): asyncio on
uvloop over raw keep-alive sockets, N connections with one request in flight each, cycling through a
list of (path, bearer token) requests; it prints JSON with the rate, p50/p99 latency, status counts
and the total number of responses (warm-up included). A raw-socket client costs far less per
request than an HTTP library, so the generator is rarely the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UVICORN_FLAGS = [
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


async def _connection(
    port: int, requests: list[bytes], offset: int, stride: int, warm_until: float, stop_at: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(requests[i % len(requests)])
            i += stride
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
                if length:
                    await reader.readexactly(length)
            t1 = time.perf_counter()
            out["total"] += 1
            if t0 >= warm_until:
                out["latencies"].append(t1 - t0)
                out["status"][status] = out["status"].get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], connections: int, warmup: float, duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "status": {}, "total": 0}
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + duration
    await asyncio.gather(
        *(_connection(port, requests, k, connections, warm_until, stop_at, out) for k in range(connections))
    )
    lat = sorted(out["latencies"])

    def q(f: float) -> float:
        return lat[min(len(lat) - 1, int(f * len(lat)))] * 1000 if lat else float("nan")

    return {
        "rps": len(lat) / duration,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "status": out["status"],
        "total": out["total"],
    }


def main() -> int:
    import uvloop

    p = argparse.ArgumentParser(description="HTTP load generator (internal to the benchmarks)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--spec", required=True, help="JSON file: a list of [path, bearer token or '']")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()

    spec = json.loads(Path(args.spec).read_text())
    requests = [
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
            + "\r\n"
        ).encode()
        for path, token in spec
    ]
    result = uvloop.run(_load(args.port, requests, args.connections, args.warmup, args.duration))
    print(json.dumps(result))
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what one request costs the server, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    port: int, spec: list[tuple[str, str]], *, connections: int, warmup: float, duration: float
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        cmd = [
            sys.executable,
            __file__,
            "--port",
            str(port),
            "--spec",
            f.name,
            "--connections",
            str(connections),
            "--warmup",
            str(warmup),
            "--duration",
            str(duration),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=warmup + duration + 60)
    finally:
        os.unlink(f.name)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_process(target: str, env: dict[str, str], log_file: Path) -> Iterator[tuple[int, int]]:
    import httpx

    port = free_port()
    with log_file.open("wb") as logs:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                target,
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *UVICORN_FLAGS,
            ],
            cwd=ROOT,
            env=env,
            stdout=logs,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{target} did not start; see {log_file}") from None
                    time.sleep(0.2)
            yield port, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
