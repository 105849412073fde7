"""The login page (an API key in, a session cookie out), logout, and the home redirect.

There are no default credentials: a first user makes a key with ``tunelab keys create --name NAME --role
admin`` and pastes it here. Logins and refused keys go to the audit log, as the API's 401s do.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse

from tunelab.registry.audit_trail import record
from tunelab.security.roles import READ_RUNS
from tunelab.ui.render import page
from tunelab.ui.sessions import COOKIE, LONGEST_SECONDS, current_session

router = APIRouter()


def safe_next(target: str | None) -> str:
    """Only a dashboard path: a login link cannot send the browser to another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


@router.get("/ui/login")
async def login_form(request: Request, next: str | None = None):
    return page(request, "login.html", None, next=safe_next(next), error=None)


@router.post("/ui/login")
async def login(request: Request, key: str = Form(""), next: str = Form("/ui/")):
    state = request.app.state.ui
    session = await state.sessions.login(key)
    if session is None:
        await anyio.to_thread.run_sync(lambda: record("ui.login.refused", "anonymous", registry=state.registry))
        return page(request, "login.html", None, status_code=401, next=safe_next(next),
                    error="That key is not valid (mistyped, revoked, or from another registry). "
                          "Make one with: tunelab keys create --name NAME --role viewer")
    principal = session.principal
    await anyio.to_thread.run_sync(lambda: record("ui.login", f"key:{principal.key_id}", registry=state.registry,
                                                  role=principal.role))
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, session.token, max_age=LONGEST_SECONDS, path="/", httponly=True,
                        samesite="strict", secure=state.settings.secure_cookies)
    return response


@router.post("/ui/logout")
async def logout(request: Request):
    request.app.state.ui.sessions.logout(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/ui/")
async def home(request: Request):
    session = await current_session(request)
    return RedirectResponse("/ui/runs" if session.can(READ_RUNS) else "/ui/playground", status_code=303)
