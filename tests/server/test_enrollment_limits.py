"""Enrollment abuse: a flood from one address, or from many, is answered 429 with Retry-After, and a
normal device still enrolls once the wait is over. The clock is the app's injected one: no sleeping."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server.config import load_settings
from server.core.ratelimit import EnrollmentLimiter

from .conftest import ADMIN, ENROLLMENT_SECRET, Env, assert_problem, bearer

SQLITE_ONLY = pytest.mark.parametrize("env", ["sqlite-file"], indirect=True)  # the limits live in the process


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def body(device_id: str | None = None, secret: str = ENROLLMENT_SECRET) -> dict[str, Any]:
    doc: dict[str, Any] = {"enrollment_secret": secret, "model": "shapes"}
    if device_id:
        doc["device_id"] = device_id
    return doc


def from_address(client: TestClient, address: str) -> TestClient:
    """Another client of the same running app, calling from `address`."""
    return TestClient(client.app, raise_server_exceptions=False, client=(address, 40000))


def enrolled_ids(client: TestClient) -> set[str]:
    r = client.get("/v1/devices", params={"limit": 1000}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return {d["device_id"] for d in r.json()["items"]}


def test_enrollment_flood_gets_429_with_retry_after_and_a_normal_device_enrolls_after_it(env: Env) -> None:
    clock = Clock()
    app = env.client(clock=clock, enroll_rate=0.5, enroll_burst=5, enroll_global_rate=100, enroll_global_burst=100)
    flooder = from_address(app, "203.0.113.7")
    answers = [flooder.post("/v1/devices/enroll", json=body(f"flood-{i:02d}")) for i in range(30)]

    assert [a.status_code for a in answers[:5]] == [201] * 5
    for refused in answers[5:]:
        doc = assert_problem(refused, 429, "rate-limited")
        assert refused.headers["Retry-After"] == "2"  # one token at 0.5 per second
        assert "too many enrollments from this address" in doc["detail"]
    assert enrolled_ids(app) == {f"flood-{i:02d}" for i in range(5)}  # the refused ones created nothing
    # refused before its body is read: garbage is 429, not 422
    assert_problem(flooder.post("/v1/devices/enroll", content=b"\x00not json"), 429, "rate-limited")

    # another address is not held back by the flood
    neighbour = from_address(app, "198.51.100.20")
    assert neighbour.post("/v1/devices/enroll", json=body("neighbour")).status_code == 201

    # the flooder's address, once Retry-After has passed: a normal device enrolls and polls
    clock.advance(2)
    r = flooder.post("/v1/devices/enroll", json=body("cam-after-flood"))
    assert r.status_code == 201, r.text
    assert app.get("/v1/device/update", headers=bearer(r.json()["token"])).status_code == 204
    metrics = app.get("/metrics").text
    assert 'ota_enrollments_rate_limited_total{scope="address"} 26.0' in metrics


@SQLITE_ONLY
def test_global_limit_bounds_a_flood_from_many_addresses(env: Env) -> None:
    clock = Clock()
    app = env.client(clock=clock, enroll_rate=10, enroll_burst=10, enroll_global_rate=1, enroll_global_burst=3)
    codes = [from_address(app, f"192.0.2.{i}").post("/v1/devices/enroll", json=body()).status_code for i in range(3)]
    assert codes == [201, 201, 201]
    refused = from_address(app, "192.0.2.99").post("/v1/devices/enroll", json=body())
    doc = assert_problem(refused, 429, "rate-limited")
    assert "from all clients together" in doc["detail"] and refused.headers["Retry-After"] == "1"
    clock.advance(1)
    assert from_address(app, "192.0.2.99").post("/v1/devices/enroll", json=body()).status_code == 201
    assert 'ota_enrollments_rate_limited_total{scope="global"} 1.0' in app.get("/metrics").text


@SQLITE_ONLY
def test_guessing_the_secret_uses_up_the_bucket(env: Env) -> None:
    app = env.client(clock=Clock(), enroll_rate=0.1, enroll_burst=3)
    guesser = from_address(app, "203.0.113.50")
    for i in range(3):
        assert_problem(guesser.post("/v1/devices/enroll", json=body(secret=f"guess-{i}")), 403, "enrollment-refused")
    # the right secret now gets no further: the answer no longer says whether a guess was right
    r = guesser.post("/v1/devices/enroll", json=body(secret=ENROLLMENT_SECRET))
    assert_problem(r, 429, "rate-limited")
    assert r.headers["Retry-After"] == "10"


@SQLITE_ONLY
def test_limits_can_be_turned_off(env: Env) -> None:
    app = env.client(clock=Clock(), enroll_rate=0, enroll_burst=1, enroll_global_rate=0, enroll_global_burst=1)
    codes = {app.post("/v1/devices/enroll", json=body(f"cam-{i}")).status_code for i in range(12)}
    assert codes == {201}


@SQLITE_ONLY
def test_limits_come_from_the_environment(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTA_ENROLL_BURST", "2")
    monkeypatch.setenv("OTA_ENROLL_RATE", "0.25")
    from_env = load_settings()
    assert (from_env.enroll_burst, from_env.enroll_rate) == (2, 0.25)
    app = env.client(clock=Clock(), enroll_burst=from_env.enroll_burst, enroll_rate=from_env.enroll_rate)
    codes = [app.post("/v1/devices/enroll", json=body()).status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert app.post("/v1/devices/enroll", json=body()).headers["Retry-After"] == "4"


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [("OTA_ENROLL_RATE", "-1", "enroll_rate"), ("OTA_ENROLL_BURST", "0", "enroll_burst")],
)
def test_a_nonsense_limit_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, complaint: str
) -> None:
    from server.errors import ConfigurationError

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=complaint):
        load_settings()


def limiter(clock: Clock, **limits: Any) -> EnrollmentLimiter:
    values = {"rate": 1.0, "burst": 2, "global_rate": 0.0, "global_burst": 1, "max_addresses": 100, **limits}
    return EnrollmentLimiter(clock=clock, **values)


def test_ipv6_addresses_of_one_64_share_a_bucket() -> None:
    lim = limiter(Clock(), burst=1)
    assert lim.admit("2001:db8:1:2::1") is None
    assert lim.admit("2001:db8:1:2:ffff::9") is not None  # same /64: same host, other address
    assert lim.admit("2001:db8:1:3::1") is None  # another /64
    assert lim.admit("::ffff:192.0.2.1") is None and lim.admit("192.0.2.1") is not None  # IPv4-mapped is IPv4


def test_a_refused_address_does_not_drain_the_global_bucket() -> None:
    lim = limiter(Clock(), burst=1, global_rate=1.0, global_burst=3)
    assert lim.admit("192.0.2.1") is None
    refusals = [lim.admit("192.0.2.1") for _ in range(50)]
    assert all(r is not None and r.scope == "address" for r in refusals)
    assert lim.admit("192.0.2.2") is None and lim.admit("192.0.2.3") is None  # the two global tokens left
    refusal = lim.admit("192.0.2.4")
    assert refusal is not None and refusal.scope == "global"


def test_memory_is_bounded_by_the_tracked_addresses() -> None:
    clock = Clock()
    lim = limiter(clock, burst=1, max_addresses=100)
    for i in range(1000):
        assert lim.admit(f"10.0.{i // 256}.{i % 256}") is None
    assert lim.tracked == 100  # the least recently seen were forgotten
    assert lim.admit("10.0.3.231") is not None  # the most recent is still held to its limit
