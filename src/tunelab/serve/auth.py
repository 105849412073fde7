"""Who may call what: API keys and roles, checked before a request reaches any route.

Every route is denied unless ``ROUTE_ROLES`` names the roles that may call it, so a route added
without an entry is closed, not open. Each route asks for one permission, and the roles that hold it
come from ``security/roles.py`` (four roles: inference, viewer, trainer, admin; why each may do what
it may is written there). ``/health`` and ``/ready`` are the only public routes: load
balancers probe them without credentials and they carry no data. The check runs as ASGI middleware,
ahead of body parsing, so a caller without a valid key learns nothing, not even whether the body was
valid. A key is checked against the registry (HMAC, constant time) at most every ``ttl`` seconds;
revoking a key through the server takes effect at once, through the CLI within ``ttl``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.registry.keys import KEY_PATTERN, digest, verify_key
from tunelab.security.roles import (ADMIN, ALIASES, FEEDBACK, GENERATE, MANAGE_AB, MANAGE_ADAPTERS, MANAGE_KEYS,
                                    MONITOR, READ_MODELS, roles_with)
from tunelab.serve.errors import error_response

PUBLIC = None
ROUTE_PERMISSIONS: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/v1/models"): READ_MODELS,
    ("GET", "/v1/models/{name}"): READ_MODELS,
    ("POST", "/v1/chat/completions"): GENERATE,
    ("POST", "/v1/completions"): GENERATE,
    ("POST", "/v1/feedback"): FEEDBACK,
    ("GET", "/metrics"): MONITOR,
    ("GET", "/v1/ab"): MONITOR,
    ("GET", "/v1/ab/{name}"): MONITOR,
    ("POST", "/v1/ab"): MANAGE_AB,
    ("DELETE", "/v1/ab/{name}"): MANAGE_AB,
    ("GET", "/v1/admin/adapters"): MONITOR,
    ("POST", "/v1/admin/adapters"): MANAGE_ADAPTERS,
    ("DELETE", "/v1/admin/adapters/{name}"): MANAGE_ADAPTERS,
    ("GET", "/v1/admin/keys"): MANAGE_KEYS,
    ("POST", "/v1/admin/keys"): MANAGE_KEYS,
    ("DELETE", "/v1/admin/keys/{key_id}"): MANAGE_KEYS,
}
ROUTE_ROLES: dict[tuple[str, str], frozenset[str] | None] = {
    route: PUBLIC if needed is PUBLIC else roles_with(needed) for route, needed in ROUTE_PERMISSIONS.items()}
NO_AUTH = "no-auth"


def describe_auth(schema: dict, auth: bool = True) -> dict:
    """The OpenAPI ``schema`` with the bearer key each route needs and the roles that may call it."""
    if not auth:
        return schema
    schema.setdefault("components", {})["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "tl-... (tunelab keys create)"}}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            roles = ROUTE_ROLES.get((method.upper(), path), frozenset())
            if roles is not PUBLIC:
                operation["security"] = [{"apiKey": []}]
                operation["x-roles"] = sorted(roles)
    return schema


@dataclass(frozen=True)
class Principal:
    key_id: str | None  # None when the server runs with --no-auth
    role: str
    name: str


class KeyCheck:
    """Keys verified against the registry, remembered for ``ttl`` seconds (by their HMAC, never in clear)."""

    def __init__(self, registry, ttl: float = 5.0):
        self.registry, self.ttl = registry, ttl
        self.known: dict[str, tuple[Principal, float]] = {}

    async def principal(self, presented: str) -> Principal | None:
        if not KEY_PATTERN.match(presented):
            return None
        hashed = digest(presented)
        cached = self.known.get(hashed)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        found = await anyio.to_thread.run_sync(self._lookup, presented)
        if found is None:
            self.known.pop(hashed, None)
            return None
        self.known[hashed] = (found, time.monotonic() + self.ttl)
        return found

    def forget(self, key_id: str) -> None:
        """Drop a revoked key from memory now."""
        self.known = {h: entry for h, entry in self.known.items() if entry[0].key_id != key_id}

    def _lookup(self, presented: str) -> Principal | None:
        with self.registry.session() as session:
            row = verify_key(session, presented)
            # a key stored under an old role name (a server of the older release wrote it) gets the new name
            return Principal(row.id, ALIASES.get(row.role, row.role), row.name) if row is not None else None


class AuthMiddleware:
    """401 without a valid key, 403 for a role the route does not allow; else the request goes on with
    ``request.state.principal`` set. ``keys`` None: no checks (``--no-auth``), everyone is admin."""

    def __init__(self, app: ASGIApp, *, routes, keys: KeyCheck | None):
        self.app, self.routes, self.keys = app, routes, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = self._route_path(scope)
        if path is None:  # no such route, or not this method: the router answers 404/405, no handler runs
            return await self.app(scope, receive, send)
        # HEAD is GET without the body (Starlette answers it on every GET route): the same roles apply
        key = ("GET" if scope["method"] == "HEAD" else scope["method"], path)
        if key not in ROUTE_ROLES:
            return await error_response(403, f"{key[0]} {path} is open to no role")(scope, receive, send)
        roles = ROUTE_ROLES[key]
        if roles is PUBLIC:
            return await self.app(scope, receive, send)
        principal = Principal(None, ADMIN, NO_AUTH) if self.keys is None else await self._principal(scope)
        if principal is None:
            response = error_response(401, "missing or invalid API key: send 'Authorization: Bearer tl-...' "
                                           "(tunelab keys create --name NAME)", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if principal.role not in roles:
            message = f"a {principal.role} key may not call {key[0]} {path} (needs {' or '.join(sorted(roles))})"
            return await error_response(403, message)(scope, receive, send)
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal | None:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await self.keys.principal(token.strip())

    def _route_path(self, scope: Scope) -> str | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path_format  # /v1/models/{name}, as the schema writes it, not {name:path}
        return None
