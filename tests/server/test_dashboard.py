"""The ops dashboard through HTTP: who may see it, what its forms may do, and that its numbers are the API's.

The browser-level story (sign in, chart, pause, filter, sign out in real Chromium) is
`tests/e2e/test_dashboard_browser.py`; here each rule is pinned down with the test client.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.routes.dashboard import COOKIE, SESSION_SECONDS
from server.core.auth import BOOTSTRAP, create_admin_token, revoke_admin_token
from server.core.services import Services

from .conftest import ADMIN, ADMIN_TOKEN, Env, bearer, enroll, publish, release

pytestmark = pytest.mark.parametrize("env", ["sqlite-file", "postgresql-file"], indirect=True)
PAGES = ["/", "/rollouts", "/rollouts/1", "/devices", "/devices/cam-1", "/models"]


def services(client: TestClient) -> Services:
    s: Services = client.app.state.services  # type: ignore[attr-defined]
    return s


def sign_in(client: TestClient, token: str = ADMIN_TOKEN, next: str = "/") -> Any:
    """Sign in as a browser does: load the form (its CSRF token and cookie), then post it."""
    form = client.get("/login")
    return client.post(
        "/login", data={"token": token, "next": next, "csrf": csrf_of(form.text)}, follow_redirects=False
    )


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def events(client: TestClient, token: str, *items: dict[str, Any]) -> None:
    r = client.post("/v1/device/events", json=list(items), headers=bearer(token))
    assert r.status_code == 200, r.text


def seed(env: Env, client: TestClient) -> int:
    """v1 is the baseline on 3 devices, 1 device failed v2, 1 never reported; a staged rollout of v2 runs (its id)."""
    release(client, env.artifact(1))
    publish(client, env.artifact(2))
    tokens = {f"cam-{i}": enroll(client, f"cam-{i}", site="lab" if i < 3 else "yard") for i in range(1, 6)}
    for name in ("cam-1", "cam-2", "cam-3"):
        events(client, tokens[name], {"type": "installed", "version": 1})
    events(client, tokens["cam-4"], {"type": "failed", "version": 2, "reason": "golden mismatch"})
    events(client, tokens["cam-1"], {"type": "metrics", "version": 1, "metrics": {"p95_ms": 12.5, "requests": 40}})
    r = client.post(
        "/v1/rollouts",
        json={"model": "shapes", "version": 2, "stages": [{"percent": 50, "soak_seconds": 3600}, {"percent": 100}]},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    rollout_id: int = r.json()["id"]
    return rollout_id


def test_no_page_shows_data_without_a_session(client: TestClient) -> None:
    for path in PAGES:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next="), path
    for path in ["/rollouts/1/pause", "/models/shapes/versions/1/revoke"]:
        r = client.post(path, data={"reason": "x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path


def test_a_bad_cookie_is_no_session(client: TestClient) -> None:
    client.cookies.set(COOKIE, "eyJzaWQiOiAiYSIsICJhZG1pbiI6ICJ4IiwgImV4cCI6IDk5OTk5OTk5OTl9.AAAA")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_clears_it(env: Env, client: TestClient) -> None:
    assert client.get("/login").status_code == 200
    r = sign_in(client)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and f"Max-Age={SESSION_SECONDS}" in cookie
    assert "Secure" not in cookie  # plain http without an https OTA_PUBLIC_URL
    page = client.get("/")
    assert page.status_code == 200 and "Sign out" in page.text
    r = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).status_code == 303


def test_signing_out_ends_the_session_even_for_a_copy_of_its_cookie(env: Env, client: TestClient) -> None:
    sign_in(client)
    stolen = client.cookies[COOKIE]
    page = client.get("/")
    assert client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False).status_code == 303
    other = env.client()  # another server process on the same database
    for c in (client, other):
        c.cookies.set(COOKIE, stolen)
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        c.cookies.clear()
    sign_in(client)  # a new session works
    assert client.get("/", follow_redirects=False).status_code == 200


def test_revoking_an_admin_token_ends_its_dashboard_sessions(env: Env, client: TestClient) -> None:
    db = services(client).db
    token = create_admin_token(db, name="ops")
    assert token is not None
    assert sign_in(client, token).status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 200
    assert revoke_admin_token(db, name="ops")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_behind_https(env: Env) -> None:
    client = env.client(public_url="https://ota.example")
    assert "Secure" in sign_in(client).headers["set-cookie"]


def test_sign_in_without_the_forms_csrf_token_is_refused(env: Env, client: TestClient) -> None:
    """Login CSRF: another site cannot post its own admin token into an operator's browser."""
    form = client.get("/login")
    csrf = csrf_of(form.text)
    for data in ({"token": ADMIN_TOKEN}, {"token": ADMIN_TOKEN, "csrf": "forged"}):
        r = client.post("/login", data=data, follow_redirects=False)
        assert r.status_code == 403 and "sign in again" in r.text
        assert COOKIE not in r.headers.get("set-cookie", "")
    stranger = env.client()  # a browser without the form's cookie, holding a token copied from the page
    r = stranger.post("/login", data={"token": ADMIN_TOKEN, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 403
    assert sign_in(client).status_code == 303


def test_a_device_token_or_a_wrong_token_cannot_sign_in(env: Env, client: TestClient) -> None:
    device = enroll(client, "cam-1")
    for token in (device, "otaa_not-a-real-token", ""):
        r = sign_in(client, token)
        assert r.status_code == 401 and "not an admin token" in r.text
        assert COOKIE not in r.headers.get("set-cookie", "")
        assert client.get("/", follow_redirects=False).status_code == 303


def test_sign_in_never_redirects_off_the_server(client: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        r = sign_in(client, next=target)
        assert r.headers["location"] == "/", target


def test_a_session_expires(env: Env, client: TestClient) -> None:
    signer = services(client).signer
    client.cookies.set(
        COOKIE, signer.session_cookie(BOOTSTRAP, ttl=SESSION_SECONDS, now=time.time() - SESSION_SECONDS - 1)
    )
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.set(COOKIE, signer.session_cookie(BOOTSTRAP, ttl=SESSION_SECONDS))
    assert client.get("/", follow_redirects=False).status_code == 200


def test_the_fleet_chart_shows_the_numbers_of_v1_fleet(env: Env, client: TestClient) -> None:
    rid = seed(env, client)
    sign_in(client)
    page = client.get("/").text
    fleet = client.get("/v1/fleet", headers=ADMIN).json()["models"][0]
    bars = dict(re.findall(r'class="bar-version" data-version="([^"]+)" data-devices="(\d+)"', page))
    expected = {("none" if v["version"] is None else f"v{v['version']}"): str(v["devices"]) for v in fleet["versions"]}
    assert bars == expected == {"v1": "3", "none": "2"}
    assert '<strong class="on-baseline">3</strong> of 5 (60.0 %)' in page
    statuses = dict(re.findall(r'data-status="([^"]+)">(\d+)<', page))
    assert statuses == {**{k: str(n) for k, n in fleet["statuses"].items()}, "stale": "0"}
    assert f'href="/rollouts/{rid}">#{rid} → v2</a> <span class="pill running">running</span>' in page


def test_a_device_not_seen_for_three_poll_intervals_is_stale(env: Env) -> None:
    client = env.client(poll_interval=1)
    enroll(client, "cam-1")
    sign_in(client)
    time.sleep(3.2)
    assert 'data-status="stale">1<' in client.get("/").text


def test_a_rollout_paused_from_the_page_is_paused_in_the_api(env: Env, client: TestClient) -> None:
    rid = seed(env, client)
    sign_in(client)
    assert '<span class="pill running">running</span>' in client.get("/").text  # counted, and kept for a while
    page = client.get(f"/rollouts/{rid}")
    assert page.status_code == 200
    assert 'id="do-pause"' in page.text and 'id="do-resume"' not in page.text
    assert re.search(r'data-count="installed">0<', page.text)
    r = client.post(f"/rollouts/{rid}/pause", data={"csrf": csrf_of(page.text), "reason": "p95 <b>spike</b>"})
    assert r.status_code == 200 and "Done: pause." in r.text
    doc = client.get(f"/v1/rollouts/{rid}", headers=ADMIN).json()
    assert doc["state"] == "paused"
    assert doc["reason"] == "p95 <b>spike</b>"
    assert "p95 &lt;b&gt;spike&lt;/b&gt;" in r.text and "<b>spike</b>" not in r.text
    assert 'id="do-resume"' in r.text
    assert r.text.count("p95 &lt;b&gt;spike&lt;/b&gt;") == 2  # the reason, and the history's entry
    fleet = client.get("/").text  # the counts may be seconds old; the rollout's state is not
    assert '<span class="pill paused">paused</span>' in fleet and "pill running" not in fleet


def test_an_action_needs_a_reason(env: Env, client: TestClient) -> None:
    rid = seed(env, client)
    sign_in(client)
    csrf = csrf_of(client.get(f"/rollouts/{rid}").text)
    r = client.post(f"/rollouts/{rid}/abort", data={"csrf": csrf, "reason": "  "})
    assert r.status_code == 422 and "Give a reason." in r.text
    assert client.get(f"/v1/rollouts/{rid}", headers=ADMIN).json()["state"] == "running"


def test_a_form_without_the_sessions_csrf_token_is_refused(env: Env, client: TestClient) -> None:
    rid = seed(env, client)
    sign_in(client)
    other = env.client()
    sign_in(other)
    foreign = csrf_of(other.get(f"/rollouts/{rid}").text)  # a valid token of another session
    for data in ({"reason": "x"}, {"reason": "x", "csrf": "forged"}, {"reason": "x", "csrf": foreign}):
        r = client.post(f"/rollouts/{rid}/abort", data=data)
        assert r.status_code == 403, data
        r = client.post("/models/shapes/versions/2/revoke", data=data)
        assert r.status_code == 403, data
    assert client.get(f"/v1/rollouts/{rid}", headers=ADMIN).json()["state"] == "running"
    assert client.get("/v1/models/shapes/versions/2", headers=ADMIN).json()["revoked"] is False


def test_devices_filter_and_paginate_stably_while_devices_enroll(env: Env, client: TestClient) -> None:
    seed(env, client)
    sign_in(client)
    ids = lambda text: re.findall(r'<tr class="device"><td><a href="/devices/[^"]+">([^<]+)</a>', text)  # noqa: E731
    assert ids(client.get("/devices?label=site:lab").text) == ["cam-1", "cam-2"]
    assert ids(client.get("/devices?status=failed").text) == ["cam-4"]
    assert ids(client.get("/devices?version=1&model=shapes").text) == ["cam-1", "cam-2", "cam-3"]
    assert "not one this server issued" in client.get("/devices?cursor=zzz").text
    for i in range(6, 60):
        enroll(client, f"cam-{i:02d}")
    first = client.get("/devices")
    seen = ids(first.text)
    assert len(seen) == 50
    next_url = html.unescape(re.search(r'id="next" href="([^"]+)"', first.text).group(1))  # type: ignore[union-attr]
    for i in range(60, 70):  # enrolled between the two pages: they come after, nothing shifts
        enroll(client, f"cam-{i}")
    rest = ids(client.get(next_url).text)
    assert not set(seen) & set(rest)
    assert len(seen) + len(rest) == 69


def test_device_page_shows_labels_version_events_and_metrics_escaped(env: Env, client: TestClient) -> None:
    seed(env, client)
    token = enroll(client, "cam-x", note="<script>alert(1)</script>")
    events(client, token, {"type": "failed", "version": 2, "reason": "<img src=x onerror=alert(1)>"})
    sign_in(client)
    page = client.get("/devices/cam-1").text
    assert 'id="installed">v1<' in page and "site=lab" in page
    assert re.search(r"<th>p95_ms</th><td class=\"num\">12.5</td>", page)
    page = client.get("/devices/cam-x").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>" not in client.get("/devices").text
    assert client.get("/devices/nobody").status_code == 404


def test_models_page_lists_versions_and_revokes_with_a_reason(env: Env, client: TestClient) -> None:
    seed(env, client)
    sign_in(client)
    page = client.get("/models").text
    versions = client.get("/v1/models/shapes/versions", headers=ADMIN).json()
    for v in versions:
        assert (
            f'data-version="{v["version"]}"><td>v{v["version"]}</td><td class="num">{v["payload"]["length"]:,} B'
            in page
        )
    r = client.post("/models/shapes/versions/2/revoke", data={"csrf": csrf_of(page), "reason": "bad <labels>"})
    assert r.status_code == 200 and "revoked" in r.text and "bad &lt;labels&gt;" in r.text
    doc = client.get("/v1/models/shapes/versions/2", headers=ADMIN).json()
    assert doc["revoked"] is True and doc["revoked_reason"] == "bad <labels>"


def test_pages_are_not_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/login", "/devices", "/models", "/rollouts"} & set(paths)


def test_rollouts_list_shows_every_rollout_with_counts_for_the_active_one(env: Env, client: TestClient) -> None:
    rid = seed(env, client)
    sign_in(client)
    page = client.get("/rollouts").text
    rows = re.findall(r'<tr class="rollout" data-id="(\d+)">(.*?)</tr>', page)
    assert [int(i) for i, _ in rows] == [rid, rid - 1]
    cohort = client.get(f"/v1/rollouts/{rid}", headers=ADMIN).json()["stages"][0]["cohort"]
    assert "running" in rows[0][1] and f"0 / {cohort}</td>" in rows[0][1] and "1 / 2 (50.0 %)" in rows[0][1]
    assert "completed" in rows[1][1] and "—</td>" in rows[1][1]


def test_rollout_page_shows_the_engines_last_stage_counts_and_gates(env: Env) -> None:
    client = env.client(rollout_eval_seconds=3600)  # the engine judges when this test says
    release(client, env.artifact(1))
    publish(client, env.artifact(2))
    tokens = [enroll(client, f"cam-{i}") for i in range(8)]
    body = {
        "model": "shapes",
        "version": 2,
        "stages": [{"percent": 100, "soak_seconds": 3600}],
        "min_devices": 1,
        "gates": [{"metric": "latency_p95_ratio", "max": 1.5, "min_samples": 3}],
    }
    rid = client.post("/v1/rollouts", json=body, headers=ADMIN).json()["id"]
    for i, token in enumerate(tokens):
        r = client.get("/v1/device/update?current_version=1", headers=bearer(token))
        assert r.status_code == 200, r.text
        if i < 3:
            events(client, token, {"type": "installed", "version": 2})
        elif i < 5:
            events(client, token, {"type": "failed", "version": 2, "reason": "golden mismatch"})
        elif i == 5:  # a full disk: the device's fault, shown apart
            events(client, token, {"type": "failed", "version": 2, "reason": "no_space"})
    services(client).rollouts.offers.flush()
    sign_in(client)
    page = client.get(f"/rollouts/{rid}").text
    shown = dict(re.findall(r'data-count="(\w+)">(\d+)<', page))
    assert shown["installed"] == "0" and shown["not_reached"] == "8"  # as the engine last judged it: at creation
    services(client).rollouts.evaluate_once()  # what the engine does every OTA_ROLLOUT_EVAL_SECONDS
    page = client.get(f"/rollouts/{rid}").text
    stage = client.get(f"/v1/rollouts/{rid}", headers=ADMIN).json()["stages"][0]
    shown = dict(re.findall(r'data-count="(\w+)">(\d+)<', page))
    keys = ("installed", "failed", "device_faults", "pending", "not_reached")
    assert shown == {k: str(stage["counts"][k]) for k in keys}
    assert shown == {"installed": "3", "failed": "2", "device_faults": "1", "pending": "2", "not_reached": "0"}
    gate = re.search(r"<td>latency_p95_ratio</td>(.*?)</tr>", page, re.S)
    assert gate and '<td class="num">1.5</td>' in gate.group(1) and "pending" in gate.group(1)


def test_hostile_paths_and_filters_get_an_answer_not_a_crash(env: Env, client: TestClient) -> None:
    seed(env, client)
    sign_in(client)
    assert client.get(f"/rollouts/{2**63}").status_code == 422
    assert client.get("/rollouts/999").status_code == 404
    assert client.get(f"/devices?version={2**63}").status_code == 400
    assert client.get("/devices?version=abc").status_code == 400
    assert client.get("/devices?status=nonsense").status_code == 200  # no device has it: an empty page
    assert client.get("/devices/%3Cscript%3E").status_code == 404
