"""Who is looking at the dashboard: a login with an API key, a session cookie, and a permission per page.

The dashboard has no accounts of its own: the login page takes an API key (``tunelab keys create``),
checks it as the API does (``serve/auth.py``'s ``KeyCheck``), and opens a session. The browser gets
only a random session token, in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` behind TLS);
the key stays in this process's memory, because the playground calls the server with it. Every
request checks the key again (cached a few seconds), so a revoked key ends its sessions.

Each page asks for a permission of ``security/roles.py``, never for a role name: a viewer looks but
cannot start runs, promote or review. Every request that changes something (a POST) must carry the
session's CSRF token, in the ``X-CSRF-Token`` header (htmx and fetch send it) or a ``csrf_token``
form field; ``SameSite=Strict`` already keeps other sites' forms out, the token is the second lock.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request

from tunelab.security.roles import allows
from tunelab.serve.auth import KeyCheck, Principal

COOKIE = "tunelab_session"
IDLE_SECONDS = 8 * 3600  # a session unused this long is closed
LONGEST_SECONDS = 24 * 3600  # and none lives longer than this


class LoginRequired(Exception):
    """No session, or its key no longer works: pages send the browser to the login page."""


class Forbidden(Exception):
    """The session's role lacks the permission a page or action needs."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class Session:
    token: str
    principal: Principal
    key: str = field(repr=False)  # the API key itself: the playground calls the server with it
    csrf: str = field(repr=False)
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    @property
    def role(self) -> str:
        return self.principal.role

    def can(self, permission: str) -> bool:
        return allows(self.principal.role, permission)


class SessionStore:
    """Open sessions, in memory: restarting the dashboard logs everyone out, and no token is ever on disk."""

    def __init__(self, keys: KeyCheck):
        self.keys = keys
        self.open: dict[str, Session] = {}

    async def login(self, key: str) -> Session | None:
        principal = await self.keys.principal(key.strip())
        if principal is None:
            return None
        self._drop_expired()
        session = Session(secrets.token_urlsafe(32), principal, key.strip(), secrets.token_urlsafe(24))
        self.open[session.token] = session
        return session

    async def get(self, token: str | None) -> Session | None:
        session = self.open.get(token or "")
        now = time.monotonic()
        if session is None or now - session.seen > IDLE_SECONDS or now - session.created > LONGEST_SECONDS:
            self.open.pop(token or "", None)
            return None
        principal = await self.keys.principal(session.key)  # revoked since the login: the session ends
        if principal is None:
            self.open.pop(session.token, None)
            return None
        session.principal, session.seen = principal, now
        return session

    def logout(self, token: str | None) -> None:
        self.open.pop(token or "", None)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for token, session in list(self.open.items()):
            if now - session.seen > IDLE_SECONDS or now - session.created > LONGEST_SECONDS:
                del self.open[token]


async def current_session(request: Request) -> Session:
    """The request's session, or ``LoginRequired``."""
    store: SessionStore = request.app.state.ui.sessions
    session = await store.get(request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired()
    return session


def needs(permission: str):
    """A FastAPI dependency: the session, when its role has ``permission``; a POST must carry the CSRF token."""

    async def dependency(request: Request) -> Session:
        session = await current_session(request)
        if not session.can(permission):
            raise Forbidden(f"a {session.role} key may not do this (it needs the {permission!r} permission); "
                            f"log in with a key of a role that has it")
        if request.method not in ("GET", "HEAD"):
            await check_csrf(request, session)
        return session

    return dependency


async def check_csrf(request: Request, session: Session) -> None:
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = (await request.form()).get("csrf_token")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden("this form is stale or came from another site (no valid CSRF token); reload the page")
