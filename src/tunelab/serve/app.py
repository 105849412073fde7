"""``tunelab serve``: the FastAPI app, its state, and the order things start in.

Start: open the registry, check every adapter named on the command line, load the base with the
first adapter's precision, attach the adapters, start the engine's thread and the response log,
then A/B tests. Stop: the engine, then the log's last batch. Routes live in ``routes_openai.py``
(what users call) and ``routes_admin.py`` (adapters, keys, A/B tests, metrics); ``auth.py`` stands in
front of both, and ``audit.py`` in front of it records admin calls and refused keys in the audit log.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.errors import TunelabError
from tunelab.registry.db import open_registry
from tunelab.registry.serving import active_ab_tests, pick_arm, start_ab_test, user_hash
from tunelab.serve.audit import AuditTrail
from tunelab.serve.auth import AuthMiddleware, KeyCheck, Principal, describe_auth
from tunelab.serve.completions import Job, Limits, Outcome
from tunelab.serve.engine import Engine
from tunelab.serve.errors import ERROR_RESPONSES, ApiError, error_response, install_handlers
from tunelab.serve.golden import check_loaded_adapter
from tunelab.serve.metrics import CountErrors, Metrics
from tunelab.serve.pool import AdapterSource, ModelPool, Served, check_adapter
from tunelab.serve.response_log import ResponseLog

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    base: str
    adapters: list[tuple[str, str]] = field(default_factory=list)  # (name, run folder or NAME@ALIAS)
    auth: bool = True
    registry_url: str | None = None
    adapter_roots: list[Path] = field(default_factory=lambda: [Path("runs")])
    ab_tests: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    max_batch: int = 32  # rows per decode step; 1 turns batching off
    max_queue: int = 256  # choices waiting for a row; more get 429
    max_body_bytes: int = 1 << 20
    max_model_len: int | None = None
    parity_check: bool = False  # refuse adapters whose golden prompts answer differently than in eval
    allow_tainted: bool = False  # serve adapters trained on erased rows (tunelab data erase) all the same
    limits: Limits = field(default_factory=Limits)


class ServerState:
    """Everything a route needs, in one place (``request.app.state.server``)."""

    def __init__(self, settings: ServeSettings):
        self.settings, self.limits = settings, settings.limits
        self.registry = open_registry(settings.registry_url)
        sources = [(name, self._checked(name, source)) for name, source in settings.adapters]
        self.pool = pool = ModelPool(settings.base, registry=self.registry, roots=settings.adapter_roots,
                                     max_length=settings.max_model_len, allow_tainted=settings.allow_tainted,
                                     like=sources[0][1].config if sources else None)
        for name, source in sources:
            pool.attach(name, source)
        self.engine = Engine(pool.model, max_batch=settings.max_batch, max_queue=settings.max_queue)
        self.metrics = Metrics(self.engine)
        self.engine.observe_batch = self.metrics.step
        self.keys = KeyCheck(self.registry) if settings.auth else None
        self.responses = ResponseLog(self.registry)
        self.ab_tests: dict[str, dict[str, float]] = {}
        with self.registry.session() as session:
            for name, arms in settings.ab_tests:
                self.check_arms(name, arms)
                start_ab_test(session, name, arms)
            for name, arms in active_ab_tests(session).items():
                if all(arm in pool.served for arm in arms):
                    self.ab_tests[name] = arms

    def _checked(self, name: str, source: str) -> AdapterSource:
        if name == self.settings.base:
            raise TunelabError(f"--adapter {name}=...: the name is the base model's; pick another")
        return check_adapter(source, self.settings.base, self.registry, roots=None,  # the operator's own choice
                             allow_tainted=self.settings.allow_tainted)

    def check_arms(self, name: str, arms: dict[str, float]) -> None:
        if name in self.pool.served:
            raise TunelabError(f"A/B test {name!r}: a served model has that name; pick another")
        missing = [arm for arm in arms if arm not in self.pool.served]
        if missing:
            raise TunelabError(f"A/B test {name!r}: {', '.join(missing)} not served here "
                               f"(served: {', '.join(self.pool.served)})")

    def start(self) -> None:
        self.engine.start()
        self.responses.start()
        if self.settings.parity_check:
            for served in self.pool.adapters():
                check_loaded_adapter(self, served.name)

    def stop(self) -> None:
        self.engine.stop()
        self.responses.stop()

    def route(self, asked: str, subject: str) -> tuple[Served, str | None, str | None]:
        """The served model answering ``asked``: itself, or for an A/B test's name the subject's arm."""
        arms = self.ab_tests.get(asked)
        if arms is None:
            return self.pool.get(asked), None, None
        arm = pick_arm(arms, asked, subject)
        return self.pool.get(arm), asked, arm

    def finished(self, job: Job, outcome: Outcome, *, principal: Principal, user: str | None, prompt,
                 test: str | None, arm: str | None) -> None:
        """Count the request and queue it for the registry."""
        latency = job_latency(job)
        served = job.served
        self.metrics.finished(served.parent or served.name, served.adapter or "", job.endpoint, job.prompt_tokens,
                              outcome.completion_tokens, job.first_token, latency)
        self.responses.add({"id": job.id, "endpoint": job.endpoint, "model": job.asked, "served_model": served.name,
                            "model_version": served.version, "ab_test": test, "arm": arm,
                            "key_id": principal.key_id, "user_hash": user_hash(user) if user else None,
                            "prompt": prompt, "response": outcome.texts, "prompt_tokens": job.prompt_tokens,
                            "completion_tokens": outcome.completion_tokens, "latency_ms": latency * 1000,
                            "finish_reasons": outcome.finish})


def job_latency(job: Job) -> float:
    return time.monotonic() - job.started


class BodyLimit:
    """413 for a body over ``limit`` bytes, declared or streamed, before anything parses it."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"the body is over this server's limit of {self.limit} bytes")
        await response(scope, receive, send)


def build_app(state: ServerState) -> FastAPI:
    from tunelab.serve import routes_admin, routes_openai  # the routes import this module's state type

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title="tunelab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_handlers(app)
    app.include_router(routes_openai.router, responses=ERROR_RESPONSES)
    app.include_router(routes_admin.router, responses=ERROR_RESPONSES)
    schema_of_routes = app.openapi

    def openapi() -> dict:  # not served (openapi_url None); tests and tools build it: routes, errors, keys
        return describe_auth(schema_of_routes(), auth=state.keys is not None)

    app.openapi = openapi
    app.add_middleware(BodyLimit, limit=state.settings.max_body_bytes)
    routes = [*routes_openai.router.routes, *routes_admin.router.routes]  # no prefixes: their paths are the app's
    app.add_middleware(AuthMiddleware, routes=routes, keys=state.keys)  # before anything reads the body
    app.add_middleware(AuditTrail, routes=routes, registry=state.registry)  # admin calls and refusals, around auth
    app.add_middleware(CountErrors, metrics=state.metrics)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def subject_of(principal: Principal, user: str | None) -> str:
    """Who an A/B test keeps on one arm: the request's ``user``, else the key."""
    return f"user:{user}" if user else f"key:{principal.key_id or 'anonymous'}"


__all__ = ["ApiError", "ServeSettings", "ServerState", "build_app", "is_loopback", "subject_of"]
