"""The dashboard's app: its own process (``tunelab ui``) or the ``/ui`` pages of ``tunelab serve --ui``.

Either way it is one set of routes on a FastAPI app, reading the registry and the run folders it
names, with the same keys and roles as the API (``sessions.py``). Standalone, the playground and
the A/B page talk to the server at ``--server``; inside ``tunelab serve`` they talk to that server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.registry.db import Registry, open_registry
from tunelab.serve.auth import KeyCheck
from tunelab.ui import compare, datasets, login, models, new_run, playground, review, run_detail, runs_list, serving
from tunelab.ui.render import STATIC, page
from tunelab.ui.sessions import Forbidden, LoginRequired, SessionStore, current_session

# on every dashboard response: no framing by other sites (a hidden Promote button under a decoy), no MIME
# sniffing, and no dashboard URL (run names, ids) leaked to other sites in the Referer header
PAGE_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"same-origin")]


class PageHeaders:
    """Adds ``PAGE_HEADERS`` to responses under /ui/ (the API's responses, with ``serve --ui``, stay as they are)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui/"):
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                known = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in PAGE_HEADERS if h[0] not in known)]
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass
class UiSettings:
    registry_url: str | None = None
    runs_root: Path = Path("runs")  # where runs started from the dashboard are written
    data_roots: list[Path] = field(default_factory=lambda: [Path("data")])  # what the New-run form offers
    server_url: str | None = None  # the tunelab serve the playground calls (tunelab ui --server)
    serves_models: bool = False  # the pages are on the API server itself (tunelab serve --ui)
    secure_cookies: bool = False  # behind TLS: cookies marked Secure


class UiState:
    """What every dashboard route needs (``request.app.state.ui``)."""

    def __init__(self, settings: UiSettings, registry: Registry | None = None, keys: KeyCheck | None = None):
        self.settings = settings
        self.registry = registry or open_registry(settings.registry_url)
        self.keys = keys or KeyCheck(self.registry)
        self.sessions = SessionStore(self.keys)
        self.launcher = None  # the New-run form's runs (new_run.py), made on first use

    def server_url(self, request: Request) -> str | None:
        """Where the playground sends completions: this very app when it is the API server too, else --server
        (None: no server to talk to)."""
        if self.settings.serves_models:  # the address this connection came in on, not the client's Host header
            host, port = request.scope["server"]
            return f"{request.url.scheme}://{f'[{host}]' if ':' in host else host}:{port}"
        return self.settings.server_url.rstrip("/") if self.settings.server_url else None


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/ui/api/") or "application/json" in request.headers.get("accept", "")


def add_ui(app: FastAPI, state: UiState) -> None:
    """Mount the dashboard's pages and static files on ``app``."""
    app.state.ui = state
    app.add_middleware(PageHeaders)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    for module in (login, runs_list, run_detail, compare, datasets, models, new_run, playground, review, serving):
        app.include_router(module.router, include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, error: LoginRequired):
        if wants_json(request) or request.headers.get("hx-request"):
            headers = {"HX-Redirect": "/ui/login"} if request.headers.get("hx-request") else None
            body = {"error": {"message": "log in again: the session ended", "type": "authentication_error"}}
            return JSONResponse(body, status_code=401, headers=headers)
        return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, error: Forbidden):
        if wants_json(request):
            return JSONResponse({"error": {"message": error.message, "type": "permission_error"}}, status_code=403)
        try:
            session = await current_session(request)
        except LoginRequired:
            session = None
        return page(request, "error.html", session, status_code=403, title="Not allowed", message=error.message)


def build_ui_app(settings: UiSettings) -> FastAPI:
    """The standalone dashboard (``tunelab ui``)."""
    app = FastAPI(title="tunelab dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", include_in_schema=False)
    async def _home():
        return RedirectResponse("/ui/", status_code=303)

    @app.get("/health", include_in_schema=False)
    async def _health():
        return {"status": "ok"}

    add_ui(app, UiState(settings))
    return app
