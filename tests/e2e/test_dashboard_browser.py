"""The ops dashboard in real headless Chromium (Debian's package, driven by Selenium), against a real server.

`python -m server serve` runs on a free loopback port with SQLite in a temporary directory; the test
seeds a fleet through the REST API, then an operator signs in, reads the fleet chart, follows the
rollout, pauses it with a reason, filters devices and signs out — and the API must agree with what
the page showed. Screenshots of each page go to ``test-artifacts/dashboard/`` (kept out of git).

Nothing is downloaded: the driver is ``/usr/bin/chromedriver`` and the browser ``/usr/bin/chromium``,
Selenium Manager is kept offline. Without them the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import artifact as A
from tests.server import helpers
from tests.server.conftest import ENROLLMENT_SECRET
from tests.support import server_process

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_TOKEN = "browser-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing (pip install .[dev])"
    return None


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, A.SigningKey]]:
    key = A.generate_key()
    A.save_public_key(key, tmp_path / "pub.pem")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "OTA_DATABASE_URL": f"sqlite:///{tmp_path / 'ota.db'}",
        "OTA_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "OTA_ADMIN_TOKEN": ADMIN_TOKEN,
        "OTA_ENROLLMENT_SECRET": ENROLLMENT_SECRET,
        "OTA_SECRET_KEY": "browser-secret-key-0123456789abcdef",
        "OTA_PUBLISHER_KEYS": str(tmp_path / "pub.pem"),
        "OTA_CACHE_SECONDS": "0.1",
        "OTA_LOG_LEVEL": "WARNING",
    }
    with server_process(env, cwd=tmp_path, log=tmp_path / "server.log") as base:
        yield base, key


@pytest.fixture()
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver or a browser
    profile = tempfile.mkdtemp(prefix="ota-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def seed(base: str, key: A.SigningKey) -> int:
    """v1 runs on 4 of 6 devices, one failed v2, one never reported; a staged rollout of v2 is running."""
    http = httpx.Client(base_url=base, timeout=30)
    for version in (1, 2):
        r = http.post("/v1/models/shapes/versions", content=helpers.build_artifact(key, version=version), headers=ADMIN)
        assert r.status_code == 201, r.text
    r = http.post(
        "/v1/rollouts",
        json={"model": "shapes", "version": 1, "stages": [{"percent": 100}], "min_devices": 0},
        headers=ADMIN,
    )
    assert r.status_code == 201 and r.json()["state"] == "completed", r.text
    tokens = {}
    for i in range(1, 7):
        site = "lab" if i <= 2 else "yard"
        r = http.post(
            "/v1/devices/enroll",
            json={
                "enrollment_secret": ENROLLMENT_SECRET,
                "model": "shapes",
                "device_id": f"cam-{i}",
                "labels": {"site": site},
            },
        )
        assert r.status_code == 201, r.text
        tokens[f"cam-{i}"] = r.json()["token"]
    for i in range(1, 5):
        event = {"type": "installed", "version": 1}
        r = http.post("/v1/device/events", json=[event], headers={"Authorization": f"Bearer {tokens[f'cam-{i}']}"})
        assert r.status_code == 200, r.text
    failed = {"type": "failed", "version": 2, "reason": "golden mismatch"}
    r = http.post("/v1/device/events", json=[failed], headers={"Authorization": f"Bearer {tokens['cam-5']}"})
    assert r.status_code == 200, r.text
    stages = [{"percent": 50, "soak_seconds": 3600}, {"percent": 100, "soak_seconds": 0}]
    r = http.post("/v1/rollouts", json={"model": "shapes", "version": 2, "stages": stages}, headers=ADMIN)
    assert r.status_code == 201, r.text
    rollout_id: int = r.json()["id"]
    return rollout_id


def shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait_for_path(driver: Any, path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not driver.current_url.split("?")[0].endswith(path):
        assert time.monotonic() < deadline, f"expected {path}, at {driver.current_url}"
        time.sleep(0.05)


def follow(driver: Any, element: Any, path: str, timeout: float = 10) -> None:
    """Click a link or submit button and wait until the next page has loaded at `path`.

    Waiting on the URL alone is not enough when the answer comes back to the same path
    (a form that posts and redirects to the page it was on): the old page's elements
    would still be found and then go stale under the reader. So this waits for the old
    document to be replaced first.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, timeout).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.readyState") == "complete")
    wait_for_path(driver, path, timeout)


def test_an_operator_signs_in_reads_the_fleet_pauses_the_rollout_filters_devices_and_signs_out(
    server: tuple[str, A.SigningKey], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    base, key = server
    rollout_id = seed(base, key)
    driver = browser

    driver.get(f"{base}/")  # no session: the sign-in page, which returns here afterwards
    wait_for_path(driver, "/login")
    shot(driver, "1-sign-in")
    driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    follow(driver, driver.find_element(By.ID, "sign-in"), "/")

    fleet = httpx.get(f"{base}/v1/fleet", headers=ADMIN).json()["models"][0]
    bars = {
        g.get_attribute("data-version"): int(g.get_attribute("data-devices"))
        for g in driver.find_elements(By.CSS_SELECTOR, "svg.chart g.bar-version")
    }
    assert bars == {("none" if v["version"] is None else f"v{v['version']}"): v["devices"] for v in fleet["versions"]}
    assert bars == {"v1": 4, "none": 2}
    assert driver.find_element(By.CSS_SELECTOR, ".on-baseline").text == "4"
    assert driver.find_element(By.CSS_SELECTOR, "svg.chart rect").is_displayed()
    shot(driver, "2-fleet")

    follow(driver, driver.find_element(By.CSS_SELECTOR, "a.rollout-link"), f"/rollouts/{rollout_id}")
    assert driver.find_element(By.ID, "state").text == "running"
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.stage")) == 2
    shot(driver, "3-rollout")
    driver.find_element(By.ID, "reason-pause").send_keys("p95 latency spike on <lab> cameras")
    follow(driver, driver.find_element(By.ID, "do-pause"), f"/rollouts/{rollout_id}")
    assert driver.find_element(By.ID, "state").text == "paused"
    assert driver.find_element(By.ID, "reason").text == "p95 latency spike on <lab> cameras"
    doc = httpx.get(f"{base}/v1/rollouts/{rollout_id}", headers=ADMIN).json()
    assert doc["state"] == "paused" and doc["reason"] == "p95 latency spike on <lab> cameras"
    shot(driver, "4-rollout-paused")

    follow(driver, driver.find_element(By.LINK_TEXT, "Devices"), "/devices")
    driver.find_element(By.ID, "f-label").send_keys("site:lab")
    follow(driver, driver.find_element(By.ID, "filter"), "/devices")
    rows = [r.find_element(By.TAG_NAME, "a").text for r in driver.find_elements(By.CSS_SELECTOR, "tr.device")]
    assert rows == ["cam-1", "cam-2"]
    shot(driver, "5-devices-filtered")
    follow(driver, driver.find_element(By.LINK_TEXT, "cam-1"), "/devices/cam-1")
    assert driver.find_element(By.ID, "installed").text == "v1"
    shot(driver, "6-device")

    follow(driver, driver.find_element(By.LINK_TEXT, "Models"), "/models")
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.version")) == 2
    shot(driver, "7-models")
    follow(driver, driver.find_element(By.LINK_TEXT, "Rollouts"), "/rollouts")
    shot(driver, "8-rollouts")

    follow(driver, driver.find_element(By.ID, "sign-out"), "/login")
    driver.get(f"{base}/devices")
    wait_for_path(driver, "/login")  # the session is gone
    assert not driver.find_elements(By.CSS_SELECTOR, "tr.device")
