"""The server's part of the audit log: every admin API call and every refused credential, and who made it.

``AuditTrail`` is ASGI middleware just outside the key check (``auth.py``). It records

- every call of a route under ``/v1/admin`` and every A/B test started or ended (``POST``/``DELETE
  /v1/ab``), whatever its status: the route, the status, the ids in the path, and what the route adds to
  ``request.state.audit`` (the key or the adapter it made);
- every 401 on any route as ``serve.auth.failed``, with the key id the caller claimed (the public part of a
  well-formed key, never its secret) and the caller's address, and every 403 (a valid key whose role may
  not call the route) as ``serve.auth.denied``.

Actors: ``key:<key id>``, ``no-auth`` when the server runs without keys, ``unauthenticated`` for a 401.

The entry is written before the response's body is sent, so a client that saw an admin call answered can
count on its entry being on disk. The append (a file lock and an fsync) and any checkpoint run on a worker
thread under a limiter of their own, never on the event loop, so a flood of bad keys waits here without
taking the threads that key checks and registry calls use. Refusals are recorded at most
``REFUSALS_PER_MINUTE`` times a minute; the next one recorded after a burst says how many were left out.
"""

from __future__ import annotations

import functools
import time

import anyio
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.registry.audit_trail import record
from tunelab.registry.keys import KEY_PATTERN

ACTIONS = {
    ("GET", "/v1/admin/adapters"): "serve.adapters.list",
    ("POST", "/v1/admin/adapters"): "serve.adapters.load",
    ("DELETE", "/v1/admin/adapters/{name}"): "serve.adapters.unload",
    ("GET", "/v1/admin/keys"): "serve.keys.list",
    ("POST", "/v1/admin/keys"): "serve.keys.create",
    ("DELETE", "/v1/admin/keys/{key_id}"): "serve.keys.revoke",
    ("POST", "/v1/ab"): "serve.ab.start",
    ("DELETE", "/v1/ab/{name}"): "serve.ab.end",
}
REFUSALS_PER_MINUTE = 120
WRITERS = 2  # appends queue on the file lock anyway; more threads would only wait there


def action_of(method: str, path: str) -> str | None:
    """The audit action of an admin call, None for a route that is not audited when it succeeds."""
    if (method, path) in ACTIONS:
        return ACTIONS[(method, path)]
    if path.startswith("/v1/admin"):
        return "serve.admin"
    if path.startswith("/v1/ab") and method not in ("GET", "HEAD"):
        return "serve.ab"
    return None


class AuditTrail:
    def __init__(self, app: ASGIApp, *, routes, registry, refusals_per_minute: int = REFUSALS_PER_MINUTE):
        self.app, self.routes, self.registry = app, routes, registry
        self.refusals_per_minute = refusals_per_minute
        self.window, self.in_window, self.left_out = 0.0, 0, 0
        self.limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, params = self._route(scope)
        held: list[Message] = []
        done = False

        async def audited_send(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.start" and not done:
                held.append(message)  # the status is known now; nothing is sent before the entry is written
                return
            if held and not done:
                done = True
                await self._record(scope, path, params, held[0]["status"])
                await send(held.pop())
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not done:
                done = True
                await self._record(scope, path, params, 500)
            raise

    async def _record(self, scope: Scope, path: str | None, params: dict, status: int) -> None:
        method = scope["method"]
        action = {401: "serve.auth.failed", 403: "serve.auth.denied"}.get(status) if path else None
        action = action or (action_of(method, path) if path else None)
        if action is None:
            return
        objects = {"method": method, "route": path, "status": status}
        for name, value in params.items():
            objects["key" if name == "key_id" else name] = key_id_of(value) if name == "key_id" else value
        objects |= (scope.get("state") or {}).get("audit") or {}
        if status in (401, 403):
            presented = presented_key(scope)
            objects |= {"claimed_key": presented, "client": (scope.get("client") or (None,))[0]}
            if not self._refusal_allowed():
                return
            objects["suppressed"], self.left_out = self.left_out or None, 0
        actor = actor_of(scope, status)
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(WRITERS)
        await anyio.to_thread.run_sync(functools.partial(record, action, actor, registry=self.registry, **objects),
                                       limiter=self.limiter)

    def _refusal_allowed(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 60:
            self.window, self.in_window = now, 0
        if self.in_window >= self.refusals_per_minute:
            self.left_out += 1
            return False
        self.in_window += 1
        return True

    def _route(self, scope: Scope) -> tuple[str | None, dict]:
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route.path, dict(child.get("path_params") or {})
        return None, {}


def key_id_of(value: str) -> str:
    """The id part of a key id or of a whole key (revoking accepts either): a secret never reaches the log."""
    return str(value).removeprefix("tl-").split("-")[0]


def presented_key(scope: Scope) -> str | None:
    """The id of the well-formed key in the Authorization header, if any (its public part only)."""
    header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    match = KEY_PATTERN.match(token.strip()) if scheme.lower() == "bearer" else None
    return match.group(1) if match else None


def actor_of(scope: Scope, status: int) -> str:
    principal = (scope.get("state") or {}).get("principal")
    if principal is not None:
        return f"key:{principal.key_id}" if principal.key_id else "no-auth"
    if status == 401:
        return "unauthenticated"
    claimed = presented_key(scope)  # a 403 comes after a valid key: the one presented
    return f"key:{claimed}" if claimed else "unknown"
