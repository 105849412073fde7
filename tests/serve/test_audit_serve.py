"""The server's audit entries: admin calls with the key that made them, refused keys (401) and roles (403),
never a key's secret; written before the response leaves, and refusals capped per minute."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tunelab.registry.db import open_registry
from tunelab.registry.keys import create_key
from tunelab.security.audit import AuditLog
from tunelab.serve import routes_admin
from tunelab.serve.audit import AuditTrail
from tunelab.serve.auth import AuthMiddleware, KeyCheck
from tunelab.serve.errors import install_handlers

WRONG = "tl-0123456789ab-" + "A" * 43


@pytest.fixture
def registry(tmp_path):
    return open_registry(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture
def keys(registry):
    with registry.session() as session:
        return {role: create_key(session, f"test-{role}", role) for role in ("admin", "inference")}


def admin_app(registry, auth: bool = True) -> tuple[FastAPI, list]:
    """The admin routes behind the key check, as ``build_app`` puts them, without a model."""
    app = FastAPI()
    app.state.server = SimpleNamespace(registry=registry, keys=KeyCheck(registry) if auth else None)
    install_handlers(app)
    app.include_router(routes_admin.router)
    routes = list(routes_admin.router.routes)
    app.add_middleware(AuthMiddleware, routes=routes, keys=app.state.server.keys)
    return app, routes


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_admin_calls_and_refusals_are_recorded_with_their_actor_and_ids_only(registry, keys):
    app, routes = admin_app(registry)
    app.add_middleware(AuditTrail, routes=routes, registry=registry)
    client = TestClient(app)
    (admin, admin_key), (user, user_key) = keys["admin"], keys["inference"]
    created = client.post("/v1/admin/keys", json={"name": "robot", "role": "inference"}, headers=bearer(admin_key))
    assert created.status_code == 201
    entry = AuditLog().entries()[-1]  # on disk before the client had its answer
    assert entry["action"] == "serve.keys.create" and entry["actor"] == f"key:{admin.id}"
    assert entry["objects"] == {"method": "POST", "route": "/v1/admin/keys", "status": 201,
                                "key": created.json()["id"], "role": "inference"}
    secret = created.json()["key"]
    assert client.delete(f"/v1/admin/keys/{secret}", headers=bearer(admin_key)).status_code == 200
    assert client.get("/v1/admin/keys", headers=bearer(admin_key)).status_code == 200
    assert client.get("/v1/admin/keys", headers=bearer(WRONG)).status_code == 401
    assert client.get("/v1/admin/adapters").status_code == 401
    assert client.post("/v1/admin/keys", json={"name": "x"}, headers=bearer(user_key)).status_code == 403
    entries = AuditLog().entries()
    assert [(e["action"], e["actor"], e["objects"]["status"]) for e in entries] == [
        ("serve.keys.create", f"key:{admin.id}", 201), ("serve.keys.revoke", f"key:{admin.id}", 200),
        ("serve.keys.list", f"key:{admin.id}", 200), ("serve.auth.failed", "unauthenticated", 401),
        ("serve.auth.failed", "unauthenticated", 401), ("serve.auth.denied", f"key:{user.id}", 403)]
    assert entries[1]["objects"]["key"] == created.json()["id"]  # revoked by its whole key: the id only
    assert entries[3]["objects"]["claimed_key"] == "0123456789ab" and entries[3]["objects"]["client"]
    assert "claimed_key" not in entries[4]["objects"] and entries[4]["objects"]["route"] == "/v1/admin/adapters"
    text = AuditLog().path.read_text()
    assert secret not in text and admin_key not in text and "robot" not in text


def test_without_keys_the_actor_is_no_auth(registry):
    app, routes = admin_app(registry, auth=False)
    app.add_middleware(AuditTrail, routes=routes, registry=registry)
    assert TestClient(app).post("/v1/admin/keys", json={"name": "r", "role": "admin"}).status_code == 201
    entry = AuditLog().entries()[-1]
    assert (entry["action"], entry["actor"]) == ("serve.keys.create", "no-auth")


def test_refusals_are_capped_per_minute_and_the_next_entry_counts_the_rest(registry, keys):
    app, routes = admin_app(registry)
    trail = AuditTrail(app, routes=routes, registry=registry, refusals_per_minute=2)
    client = TestClient(trail)
    for _ in range(5):
        assert client.get("/v1/admin/keys", headers=bearer(WRONG)).status_code == 401
    assert len(AuditLog().entries()) == 2
    trail.window -= 61  # a minute later
    assert client.get("/v1/admin/keys", headers=bearer(WRONG)).status_code == 401
    entries = AuditLog().entries()
    assert len(entries) == 3 and entries[-1]["objects"]["suppressed"] == 3


def test_the_real_server_records_its_admin_calls(served):
    admin = served.http("admin")
    assert admin.get("/v1/admin/adapters").status_code == 200
    assert served.http(None).get("/v1/models").status_code == 401
    entries = AuditLog().entries()
    assert [(e["action"], e["objects"]["route"]) for e in entries[-2:]] == [
        ("serve.adapters.list", "/v1/admin/adapters"), ("serve.auth.failed", "/v1/models")]
    assert entries[-2]["actor"].startswith("key:")
