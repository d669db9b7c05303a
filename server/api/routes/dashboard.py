"""The ops dashboard: server-rendered pages for operators, in the same app as the API.

Pages are Jinja2 templates shipped in the package (``server/api/templates``); charts are inline SVG
computed here; there is no JavaScript and nothing is loaded from elsewhere. A page is shown only to
a signed-in admin: signing in with an admin token (never a device token) sets an HttpOnly,
SameSite=Strict cookie signed with the server's secret, which expires after
:data:`SESSION_SECONDS`, and ends earlier at sign-out or when its admin token is revoked. Every
form that changes something carries a CSRF token bound to the session and checked here (the
sign-in form one bound to a SameSite=Strict cookie of its own). Actions
call the same core services as the REST API.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import secrets
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from ...core.dashboard import ModelFleet
from ...core.rollouts import Action
from ...core.security import DashboardSession
from ...core.services import Services
from ...errors import OtaServerError
from .. import schemas
from ..deps import services_of

router = APIRouter(include_in_schema=False)
RolloutId = Annotated[int, Path(ge=1, le=schemas.MAX_INT)]
Version = Annotated[int, Path(ge=1, le=schemas.MAX_INT)]
COOKIE = "ota_session"
SESSION_SECONDS = 12 * 3600
LOGIN_COOKIE = "ota_login"  # the sign-in form's CSRF binding
LOGIN_SECONDS = 3600
PAGE_SIZE = 50
ACTIONS: tuple[Action, ...] = ("pause", "resume", "abort", "advance")
STATUSES = ("enrolled", "checking", "downloading", "verified", "installed", "failed", "rolled_back")
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

templates = Environment(
    loader=FileSystemLoader(pathlib.Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(name: str, request: Request, session: DashboardSession | None, status: int = 200, **ctx: Any) -> Response:
    csrf = ctx.pop("csrf", None) or (services_of(request).signer.csrf_token(session.sid) if session else "")
    html = templates.get_template(name).render(session=session, csrf=csrf, path=request.url.path, **ctx)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


async def current_session(request: Request) -> DashboardSession | None:
    """The signed-in session, if the cookie's session is still live (see `Authenticator.dashboard_session`)."""
    cookie = request.cookies.get(COOKIE)
    auth = services_of(request).auth
    session = await run_in_threadpool(auth.dashboard_session, cookie) if cookie else None
    if session is not None:
        request.state.admin = session.admin  # the access log names who acted, as for the API
    return session


def to_sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303, headers=HEADERS)


def safe_next(value: str | None) -> str:
    """Only a path on this server (no scheme, no host, no `//`): the sign-in is no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def form_of(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}


async def checked_form(request: Request, session: DashboardSession) -> dict[str, str] | None:
    """The form's fields if its CSRF token belongs to this session; None otherwise."""
    form = await form_of(request)
    if not services_of(request).signer.check_csrf(session.sid, form.get("csrf", "")):
        return None
    return form


def csrf_refused(request: Request, session: DashboardSession) -> Response:
    return render(
        "message.html", request, session, status=403, title="Refused", message="The form's CSRF token is invalid."
    )


async def action_form(request: Request) -> tuple[DashboardSession, str] | Response:
    """An action form's session and its reason (trimmed, at most 500 characters), or the answer that refuses it.

    Without a session: to sign in; without this session's CSRF token: 403. The reason may be empty:
    each action says itself that it needs one.
    """
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    form = await checked_form(request, session)
    if form is None:
        return csrf_refused(request, session)
    return session, form.get("reason", "").strip()[:500]


# -- sign-in ------------------------------------------------------------------------------------


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or (services_of(request).settings.public_url or "").startswith("https://")


def _login_nonce(request: Request) -> str | None:
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    return nonce if re.fullmatch(r"[0-9a-f]{32}", nonce) else None


def login_form(request: Request, *, next: str, error: str | None, status: int = 200) -> Response:
    """The sign-in form with its CSRF token, bound to a random value in a SameSite=Strict cookie
    (login CSRF: another site cannot sign an operator in as someone else without it)."""
    nonce = _login_nonce(request) or secrets.token_hex(16)
    csrf = services_of(request).signer.csrf_token(f"login:{nonce}")
    response = render("login.html", request, None, status=status, next=next, error=error, csrf=csrf)
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )
    return response


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    return login_form(request, next=safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    services: Services = services_of(request)
    form = await form_of(request)
    target = safe_next(form.get("next"))
    nonce = _login_nonce(request)
    if nonce is None or not services.signer.check_csrf(f"login:{nonce}", form.get("csrf", "")):
        error = "The sign-in form expired or came from another page; please sign in again."
        return login_form(request, next=target, error=error, status=403)
    token = form.get("token", "").strip()
    name = await run_in_threadpool(services.auth.admin, token) if token else None
    if name is None:  # device tokens, revoked and unknown tokens alike
        await asyncio.sleep(0.2)  # a little friction for guessing
        return login_form(request, next=target, error="That is not an admin token.", status=401)
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        services.signer.session_cookie(name, ttl=SESSION_SECONDS),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login", httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await current_session(request)
    if session is not None and await checked_form(request, session) is None:
        return csrf_refused(request, session)
    if session is not None:
        await run_in_threadpool(services_of(request).auth.end_session, session)
    response = RedirectResponse("/login", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- fleet --------------------------------------------------------------------------------------


def bar_chart(m: ModelFleet) -> dict[str, Any]:
    """Bars of devices per installed version, laid out for an inline SVG."""
    width, bar_h, gap, label_w = 520, 22, 8, 110
    top = max((n for _, n in m.versions), default=0) or 1
    bars = []
    for i, (version, n) in enumerate(sorted(m.versions, key=lambda vn: -1 if vn[0] is None else vn[0])):
        bars.append(
            {
                "label": "none" if version is None else f"v{version}",
                "version": version,
                "devices": n,
                "y": i * (bar_h + gap),
                "w": max(1, round((width - label_w - 60) * n / top)) if n else 0,
                "baseline": version is not None and version == m.baseline,
            }
        )
    return {"bars": bars, "width": width, "height": max(1, len(bars)) * (bar_h + gap), "bar_h": bar_h, "x0": label_w}


@router.get("/")
async def fleet_page(request: Request) -> Response:
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    overview = await run_in_threadpool(services_of(request).dashboard.fleet)
    charts = {m.model: bar_chart(m) for m in overview.models}
    return render("fleet.html", request, session, overview=overview, charts=charts)


# -- rollouts -----------------------------------------------------------------------------------


@router.get("/rollouts")
async def rollouts_page(request: Request) -> Response:
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    services = services_of(request)
    rollouts = await run_in_threadpool(services.dashboard.rollout_lines)
    return render("rollouts.html", request, session, rollouts=rollouts)


@router.get("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: RolloutId, done: str | None = None) -> Response:
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    services = services_of(request)
    try:
        counted = await run_in_threadpool(services.dashboard.rollout, rollout_id)
    except OtaServerError as e:
        return render("message.html", request, session, status=e.status, title="Rollout", message=str(e))
    return render(
        "rollout.html", request, session, r=counted.value, at=counted.at, actions=ACTIONS, done=done, error=None
    )


@router.post("/rollouts/{rollout_id}/{action}")
async def rollout_action(request: Request, rollout_id: RolloutId, action: str) -> Response:
    checked = await action_form(request)
    if isinstance(checked, Response):
        return checked
    session, reason = checked
    services = services_of(request)
    if action not in ACTIONS:
        return render("message.html", request, session, status=404, title="Rollout", message="No such action.")
    if not reason:
        counted = await run_in_threadpool(services.dashboard.rollout, rollout_id)
        return render(
            "rollout.html",
            request,
            session,
            status=422,
            r=counted.value,
            at=counted.at,
            actions=ACTIONS,
            done=None,
            error="Give a reason.",
        )
    chosen: Action = next(a for a in ACTIONS if a == action)
    try:
        await run_in_threadpool(
            lambda: services.rollouts.act(rollout_id, chosen, reason=reason, by=f"{session.admin} (dashboard)")
        )
    except OtaServerError as e:
        services.dashboard.expire()
        try:
            counted = await run_in_threadpool(services.dashboard.rollout, rollout_id)
        except OtaServerError:
            return render("message.html", request, session, status=e.status, title="Rollout", message=str(e))
        return render(
            "rollout.html",
            request,
            session,
            status=e.status,
            r=counted.value,
            at=counted.at,
            actions=ACTIONS,
            done=None,
            error=str(e),
        )
    services.dashboard.expire()
    return RedirectResponse(f"/rollouts/{rollout_id}?done={action}", status_code=303, headers=HEADERS)


# -- devices ------------------------------------------------------------------------------------


@router.get("/devices")
async def devices_page(request: Request) -> Response:
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    q = request.query_params
    model = q.get("model") or None
    status = q.get("status") or None
    label = q.get("label") or None
    version_text = q.get("version") or ""
    filters = {"model": model or "", "version": version_text, "status": status or "", "label": label or ""}
    services = services_of(request)
    try:
        version = int(version_text) if version_text else None
        if version is not None and not 0 <= version <= schemas.MAX_INT:
            raise ValueError(f"version {version} is out of range")
        page = await run_in_threadpool(
            lambda: services.fleet.list_devices(
                model=model,
                version=version,
                status=status,
                labels=[label] if label else [],
                cursor=q.get("cursor") or None,
                limit=PAGE_SIZE,
            )
        )
    except (OtaServerError, ValueError) as e:
        return render(
            "devices.html", request, session, status=400, page=None, filters=filters, statuses=STATUSES, error=str(e)
        )
    next_url = None
    if page.next_cursor:
        next_url = "/devices?" + urllib.parse.urlencode(
            {**{k: v for k, v in filters.items() if v}, "cursor": page.next_cursor}
        )
    return render(
        "devices.html", request, session, page=page, filters=filters, statuses=STATUSES, error=None, next_url=next_url
    )


@router.get("/devices/{device_id}")
async def device_page(request: Request, device_id: str) -> Response:
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    services = services_of(request)
    try:
        record = await run_in_threadpool(services.fleet.get_device, device_id)
    except OtaServerError as e:
        return render("message.html", request, session, status=e.status, title="Device", message=str(e))
    return render("device.html", request, session, record=record)


# -- models -------------------------------------------------------------------------------------


@router.get("/models")
async def models_page(request: Request, done: str | None = None) -> Response:
    session = await current_session(request)
    if session is None:
        return to_sign_in(request)
    models = await run_in_threadpool(services_of(request).dashboard.registry)
    return render("models.html", request, session, models=models, done=done, error=None)


@router.post("/models/{model}/versions/{version}/revoke")
async def revoke(request: Request, model: str, version: Version) -> Response:
    checked = await action_form(request)
    if isinstance(checked, Response):
        return checked
    session, reason = checked
    services = services_of(request)
    error = None if reason else "Give a reason."
    if reason:
        try:
            await run_in_threadpool(lambda: services.registry.revoke(model, version, reason=reason))
        except OtaServerError as e:
            error = str(e)
    if error is not None:
        models = await run_in_threadpool(services.dashboard.registry)
        return render("models.html", request, session, status=422, models=models, done=None, error=error)
    await run_in_threadpool(services.view.refresh)
    services.dashboard.expire()
    await asyncio.sleep(services.view.propagation_delay)
    return RedirectResponse(f"/models?done=revoked+{model}+v{version}", status_code=303, headers=HEADERS)
