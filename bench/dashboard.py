"""Benchmark: each dashboard page at fleet scale (issue 13's goal: p95 ≤ 300 ms with 100,000 devices).

For SQLite and for PostgreSQL (127.0.0.1:5432, database `test`, a private schema dropped at the end):

1. Migrates an empty database and enrolls 100,000 devices straight through the data layer (as
   bench/poll.py does), then spreads them like a fleet mid-rollout: 88 % installed on v1, 2 % failed,
   the rest enrolled and never seen; each has a site label.
2. Starts the real server (one uvicorn worker), publishes v1 and v2 over HTTP, releases v1 and starts
   a staged rollout of v2 (10 % / 50 % / 100 %), signs in on the dashboard like a browser.
3. Times every page (`GET`, cookie session) N times over HTTP. An active rollout's stage counts are
   the rollout engine's, kept from its last evaluation; the fleet overview's counts are fresh for
   5 s, then served stale while one thread recounts (server/core/dashboard.py); rows "right after an
   action" pause or resume the rollout from the dashboard first (state and history are read fresh).
   The first load of the fleet and of the rollout after start is timed once, reported outside the
   goal: the fleet's counts its versions and statuses in the request.
4. If Debian's Chromium and chromedriver are present, loads each page in headless Chromium and reads
   its first contentful paint (issue 13's second goal: ≤ 1 s).

Prints a table and a verdict; results go to docs/benchmarks.md (section `dashboard`).

    .venv/bin/python -m bench.dashboard [--quick] [--no-write] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._loadgen import uvicorn_process
from bench._report import log, write_section
from bench.poll import ADMIN_TOKEN, ROOT, SECRET_KEY, analyze, database, enroll_devices, squeezenet_artifact

GOAL_MS = 300.0
PAINT_GOAL_MS = 1000.0


def spread(url: str) -> None:
    """Give the bulk-inserted fleet versions, statuses, last-seen times and metrics (one UPDATE each)."""
    from sqlalchemy import text

    from server.db.session import Database, utcnow

    db = Database(url)
    try:
        with db.engine.begin() as conn:
            now = utcnow()
            conn.execute(
                text(
                    "UPDATE devices SET installed_version = 1, status = 'installed', last_seen_at = :now "
                    "WHERE id % 50 <> 0 AND id % 10 <> 1"
                ),
                {"now": now},
            )
            conn.execute(
                text("UPDATE devices SET status = 'failed', status_reason = 'golden mismatch' WHERE id % 50 = 0"),
            )
    finally:
        db.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def first_paints(base: str, pages: dict[str, str]) -> dict[str, float] | None:
    """First contentful paint (ms) of each page in headless Chromium, or None without a browser."""
    if not (os.access("/usr/bin/chromium", os.X_OK) and os.access("/usr/bin/chromedriver", os.X_OK)):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        return None
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="ota-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    out: dict[str, float] = {}
    try:
        driver.get(f"{base}/login")
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.ID, "sign-in").click()
        for name, path in pages.items():
            paints = []
            for _ in range(3):
                driver.get(base + path)
                fcp = driver.execute_script(
                    "const e = performance.getEntriesByName('first-contentful-paint');"
                    "return e.length ? e[0].startTime : null;"
                )
                if fcp is not None:
                    paints.append(float(fcp))
            if paints:
                out[name] = statistics.median(paints)
    finally:
        driver.quit()
    return out


def first_loads(browser: Any, kind: str, pages: dict[str, str]) -> list[str]:
    """The first load of each page after start: nothing cached yet (n = 1)."""
    rows = []
    for name, path in pages.items():
        t0 = time.perf_counter()
        r = browser.get(path)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
        rows.append(f"| {kind} | {name}, first load after start | {ms:.1f} | — | {ms:.1f} | 1 |")
        log(rows[-1])
    return rows


def bench_database(
    kind: str, workdir: Path, args: argparse.Namespace
) -> tuple[list[str], tuple[float, float], dict[str, float] | None]:
    import httpx

    import artifact as A
    from server.db.migrate import upgrade

    key = A.generate_key()
    A.save_public_key(key, workdir / f"{kind}.pub.pem")
    rows: list[str] = []
    worst = 0.0
    with database(kind, workdir) as url:
        log(f"[{kind}] migrating and enrolling {args.devices:,} devices")
        upgrade(url)
        enroll_devices(url, args.devices)
        spread(url)
        analyze(url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTA_")},
            "PYTHONPATH": str(ROOT),
            "OTA_DATABASE_URL": url,
            "OTA_STORAGE_URL": f"file://{workdir / (kind + '-blobs')}",
            "OTA_SECRET_KEY": SECRET_KEY,
            "OTA_ADMIN_TOKEN": ADMIN_TOKEN,
            "OTA_PUBLISHER_KEYS": str(workdir / f"{kind}.pub.pem"),
        }
        with uvicorn_process("server.cli:app_from_environment", env, workdir / f"{kind}-server.log") as (port, _pid):
            base = f"http://127.0.0.1:{port}"
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            api = httpx.Client(base_url=base, headers=admin, timeout=120)
            for version in (1, 2):
                api.post("/v1/models/squeezenet/versions", content=squeezenet_artifact(key, version)).raise_for_status()
            release = {"model": "squeezenet", "version": 1, "stages": [{"percent": 100}], "min_devices": 0}
            api.post("/v1/rollouts", json=release).raise_for_status()
            staged = {
                "model": "squeezenet",
                "version": 2,
                "stages": [
                    {"percent": 10, "soak_seconds": 3600},
                    {"percent": 50, "soak_seconds": 3600},
                    {"percent": 100},
                ],
            }
            created = api.post("/v1/rollouts", json=staged)
            created.raise_for_status()
            rollout_id = created.json()["id"]
            time.sleep(1.5)  # the registry view picks up the baseline
            browser = httpx.Client(base_url=base, timeout=120, follow_redirects=False)
            form = browser.get("/login").text  # the sign-in form's CSRF token (and its cookie)
            login_csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            signed_in = browser.post("/login", data={"token": ADMIN_TOKEN, "next": "/", "csrf": login_csrf})
            if signed_in.status_code != 303:
                raise RuntimeError(f"sign-in failed: {signed_in.status_code}")
            middle = f"cam-{args.devices // 2:06d}"
            rows += first_loads(browser, kind, {"fleet": "/", "rollout detail": f"/rollouts/{rollout_id}"})
            page = browser.get(f"/rollouts/{rollout_id}").text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            actions = itertools.cycle(["pause", "resume"])  # an even number per case: it ends running

            def act() -> None:
                """A pause or resume from the dashboard: it drops the cached counts, like any action."""
                r = browser.post(f"/rollouts/{rollout_id}/{next(actions)}", data={"csrf": csrf, "reason": "bench"})
                if r.status_code != 303:
                    raise RuntimeError(f"action: {r.status_code} {r.text[:300]}")

            def stale() -> None:
                time.sleep(5.1)  # outlive the 5 s freshness: served stale, recounted in the background

            cases: list[tuple[str, str, Any]] = [
                ("fleet, fresh counts", "/", None),
                ("fleet, stale counts (recount in background)", "/", stale),
                ("fleet, right after an action", "/", act),
                ("rollouts", "/rollouts", None),
                ("rollout detail", f"/rollouts/{rollout_id}", None),
                ("rollout detail, right after an action", f"/rollouts/{rollout_id}", act),
                ("devices, first page", "/devices", None),
                ("devices, label site:site-7", "/devices?label=site:site-7", None),
                ("devices, status failed", "/devices?status=failed", None),
                ("device detail", f"/devices/{middle}", None),
                ("models", "/models", None),
            ]
            for name, path, before in cases:
                times = []
                for _ in range(args.repeat if before is None else max(4, args.repeat // 4) * 2):
                    if before is not None:
                        before()
                    t0 = time.perf_counter()
                    r = browser.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
                p95 = percentile(times, 95)
                worst = max(worst, p95)
                median = statistics.median(times)
                rows.append(f"| {kind} | {name} | {median:.1f} | {p95:.1f} | {max(times):.1f} | {len(times)} |")
                log(rows[-1])
            pages = {name: path for name, path, before in cases if before is None}
            paints = first_paints(base, {n: p for n, p in pages.items() if "cold" not in n}) if args.paint else None
            api.close()
            browser.close()
    first = max(float(r.split("|")[3]) for r in rows if "first load" in r)
    return rows, (worst, first), paints


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 devices, fewer repeats (smoke run; not written)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--no-paint", dest="paint", action="store_false", help="skip the Chromium first-paint part")
    args = parser.parse_args()
    args.devices = 10_000 if args.quick else 100_000
    args.repeat = 5 if args.quick else 20

    rows: list[str] = []
    worst: dict[str, float] = {}
    after: dict[str, float] = {}
    paints: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ota-bench-dash-") as tmp:
        for kind in args.databases.split(","):
            r, w, p = bench_database(kind, Path(tmp), args)
            rows += r
            worst[kind], after[kind] = w
            if p:
                paints[kind] = p
    lines = [
        f"{args.devices:,} devices (88 % on v1, 2 % failed, 10 % enrolled and never seen), "
        "a staged rollout of v2 running; "
        f"one uvicorn worker; each page fetched {args.repeat} times over loopback HTTP with a session cookie "
        "(time to the full response). A rollout's stage counts and gates are the rollout engine's, from its last "
        "evaluation (every 5 s); the fleet's counts are fresh for 5 s and then served stale while one thread "
        "recounts; a rollout's state and history are read on every load, so a load right after a dashboard "
        "action (here: pause / resume in turn) shows it without counting. Only the fleet's first load after "
        "start (or after a quiet minute) counts versions and statuses in the request: shown once, outside the goal.",
        "",
        "| database | page | median ms | p95 ms | max ms | n |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    paint_ok = True
    if paints:
        lines += [
            "",
            "First contentful paint in headless Chromium (median of 3 loads):",
            "",
            "| database | page | FCP ms |",
            "|---|---|---|",
        ]
        for kind, per_page in paints.items():
            for name, ms in per_page.items():
                lines.append(f"| {kind} | {name} | {ms:.0f} |")
                paint_ok = paint_ok and ms <= PAINT_GOAL_MS
    ok = all(w <= GOAL_MS for w in worst.values())
    verdict = (
        f"Verdict: {'PASS' if ok and paint_ok else 'FAIL'} — p95 ≤ {GOAL_MS:.0f} ms on every page: "
        + ", ".join(f"{k} worst {w:.0f} ms" for k, w in worst.items())
        + f"; first loads after start ({args.devices:,} devices, not in the goal): "
        + ", ".join(f"{k} worst {w:.0f} ms" for k, w in after.items())
        + (
            f"; first paint ≤ {PAINT_GOAL_MS:.0f} ms: {'yes' if paint_ok else 'no'}"
            if paints
            else "; first paint: not measured"
        )
    )
    lines += ["", verdict]
    print("\n".join(lines))
    if not args.quick and not args.no_write:
        write_section("dashboard", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
