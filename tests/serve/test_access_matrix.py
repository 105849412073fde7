"""Who may call what, cell by cell: every route of the app against every role, through a real server.

``EXPECTED`` is the role table written out by hand: changing who may call a route means changing it
here as well as in ``security/roles.py``. Allowed cells may answer 400 or 404 for the dummy bodies and
ids below (that still proves the request got past auth); no cell changes the server's state.
"""

from __future__ import annotations

from types import SimpleNamespace

from tunelab.registry.keys import create_key
from tunelab.registry.schema import ApiKey
from tunelab.security.roles import PERMISSIONS, ROLES, allows, roles_with
from tunelab.serve.app import build_app
from tunelab.serve.auth import ROUTE_ROLES

from tests.serve.servers import running_server

PUBLIC = None
ADMIN = frozenset({"admin"})
READERS = frozenset({"admin", "trainer", "viewer", "inference"})
CALLERS = frozenset({"admin", "trainer", "inference"})
MONITORS = frozenset({"admin", "trainer", "viewer"})
CHANGERS = frozenset({"admin", "trainer"})
BASE = "{base}"  # the served base model's name, filled in once the server runs
# (method, path): (roles allowed, the path with its ids, a body)
EXPECTED = {
    ("GET", "/health"): (PUBLIC, "/health", None),
    ("GET", "/ready"): (PUBLIC, "/ready", None),
    ("GET", "/v1/models"): (READERS, "/v1/models", None),
    ("GET", "/v1/models/{name}"): (READERS, f"/v1/models/{BASE}", None),
    ("POST", "/v1/chat/completions"): (CALLERS, "/v1/chat/completions",
                                       {"model": BASE, "max_tokens": 1, "messages": [{"role": "user", "content": ""}]}),
    ("POST", "/v1/completions"): (CALLERS, "/v1/completions", {"model": BASE, "prompt": "hi", "max_tokens": 1}),
    ("POST", "/v1/feedback"): (CALLERS, "/v1/feedback", {"response_id": "no-such-response", "rating": "up"}),
    ("GET", "/metrics"): (MONITORS, "/metrics", None),
    ("GET", "/v1/ab"): (MONITORS, "/v1/ab", None),
    ("GET", "/v1/ab/{name}"): (MONITORS, "/v1/ab/no-such-test", None),
    ("POST", "/v1/ab"): (CHANGERS, "/v1/ab", {}),  # no name, no arms: 400, nothing started
    ("DELETE", "/v1/ab/{name}"): (CHANGERS, "/v1/ab/no-such-test", None),
    ("GET", "/v1/admin/adapters"): (MONITORS, "/v1/admin/adapters", None),
    ("POST", "/v1/admin/adapters"): (CHANGERS, "/v1/admin/adapters", {}),
    ("DELETE", "/v1/admin/adapters/{name}"): (CHANGERS, "/v1/admin/adapters/no-such-adapter", None),
    ("GET", "/v1/admin/keys"): (ADMIN, "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys"): (ADMIN, "/v1/admin/keys", {}),  # no name: 400, no key made
    ("DELETE", "/v1/admin/keys/{key_id}"): (ADMIN, "/v1/admin/keys/ffffffffffff", None),
}


def schema_routes() -> set[tuple[str, str]]:
    """Every (method, path) of the app's OpenAPI schema. The app serves no schema (openapi_url=None);
    ``app.openapi()`` builds it from the routes all the same, and needs no model."""
    state = SimpleNamespace(settings=SimpleNamespace(max_body_bytes=1 << 20), keys=None, metrics=None, registry=None)
    schema = build_app(state).openapi()
    return {(method.upper(), path) for path, item in schema["paths"].items() for method in item}


def test_every_route_has_an_entry_and_every_entry_a_route():
    routes = schema_routes()
    assert routes == set(ROUTE_ROLES), (f"routes without an entry: {sorted(routes - set(ROUTE_ROLES))}; "
                                        f"entries without a route: {sorted(set(ROUTE_ROLES) - routes)}")
    assert set(EXPECTED) == routes
    assert {route: roles for route, (roles, _, _) in EXPECTED.items()} == ROUTE_ROLES


def test_the_roles_nest_as_documented():
    assert ROLES == ("admin", "trainer", "viewer", "inference")
    assert PERMISSIONS["inference"] | PERMISSIONS["viewer"] < PERMISSIONS["trainer"] < PERMISSIONS["admin"]
    assert "generate" not in PERMISSIONS["viewer"] and "monitor" not in PERMISSIONS["inference"]
    assert roles_with("keys") == ADMIN and allows("user", "generate") and not allows("root", "models:read")


def test_every_role_against_every_route_through_a_real_server(tiny_model_dir):
    with running_server(tiny_model_dir) as running:
        base = running.state.pool.base_name
        with running.state.registry.session() as session:  # a key stored under the old name, as an older server
            row, running.keys["user"] = create_key(session, "legacy", "inference")  # wrote it: it acts as inference
            session.get(ApiKey, row.id).role = "user"
        callers = {role: running.http(role) for role in ROLES}
        callers["user"] = running.http("user")
        callers[None] = running.http(None)
        wrong = []
        for (method, route), (allowed, path, body) in EXPECTED.items():
            path = path.replace(BASE, base)
            if isinstance(body, dict) and body.get("model") == BASE:
                body = {**body, "model": base}
            for who, client in callers.items():
                response = client.request(method, path, json=body)
                cell = f"{who or 'no key'} {method} {path}: {response.status_code} {response.text[:120]}"
                role = "inference" if who == "user" else who
                if allowed is PUBLIC:
                    ok = response.status_code == 200
                elif who is None:
                    ok = response.status_code == 401 and error_type(response) == "authentication_error"
                elif role in allowed:  # past auth, and into the route (not the router's 404 or 405)
                    ok = response.status_code not in (401, 403, 405) and response.status_code < 500 \
                        and not response.text.startswith('{"error":{"message":"no route')
                else:
                    ok = response.status_code == 403 and error_type(response) == "permission_error"
                if not ok:
                    wrong.append(cell)
        assert not wrong, "cells that do not match the table:\n" + "\n".join(wrong)
        keys = running.http("admin").get("/v1/admin/keys").json()["data"]  # no cell made, revoked or ended anything
        assert len(keys) == len(running.keys) and not any(k["revoked"] for k in keys)
        assert running.http("admin").get("/v1/ab").json()["data"] == [] and list(running.state.pool.served) == [base]


def error_type(response) -> str | None:
    """The OpenAI-style error object's type, or None when the body is not one."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error["type"] if error.get("message") and {"param", "code"} <= set(error) else None
