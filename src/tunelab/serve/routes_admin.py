"""Admin routes: adapters loaded and unloaded at run time, API keys, A/B tests, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import anyio
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.orm import Session

from tunelab.errors import TunelabError
from tunelab.registry.keys import create_key, list_keys, revoke_key
from tunelab.registry.serving import ab_report, end_ab_test, list_ab_tests, start_ab_test
from tunelab.serve.app import ServerState
from tunelab.serve.errors import ApiError
from tunelab.serve.golden import check_loaded_adapter
from tunelab.serve.protocol import AbStart, AdapterLoad, KeyCreate
from tunelab.serve.routes_openai import model_card

router = APIRouter()
T = TypeVar("T")
UNLOAD_WAIT_SECONDS = 30  # requests still on an adapter being unloaded get this long to finish


def server(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/metrics", responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
async def metrics(request: Request):
    return Response(server(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# -- adapters -------------------------------------------------------------------------------------------------

@router.get("/v1/admin/adapters")
async def adapters(request: Request):
    return {"object": "list", "data": [model_card(s) for s in server(request).pool.adapters()]}


@router.post("/v1/admin/adapters", status_code=201)
async def load_adapter(body: AdapterLoad, request: Request):
    state = server(request)
    if body.name in state.pool.served or body.name in state.ab_tests:
        raise ApiError(409, f"{body.name!r} is already served; unload it first", param="name")
    source = await anyio.to_thread.run_sync(state.pool.check_source, body.source)

    def attach():
        served = state.pool.attach(body.name, source)
        state.engine.model = state.pool.model
        return served

    served = await asyncio.wrap_future(state.engine.call(attach))
    request.state.audit = {"name": body.name, "version": served.version}
    if state.settings.parity_check:
        try:
            await anyio.to_thread.run_sync(check_loaded_adapter, state, body.name)
        except TunelabError as failed:
            await asyncio.wrap_future(state.engine.call(lambda: detach_now(state, body.name)))
            raise ApiError(422, str(failed), param="source") from None
    return model_card(served)


def detach_now(state: ServerState, name: str) -> None:
    state.pool.detach(name)
    state.engine.model = state.pool.model


@router.delete("/v1/admin/adapters/{name}")
async def unload_adapter(name: str, request: Request):
    state = server(request)
    served = state.pool.get(name)
    if served.adapter is None:
        raise ApiError(400, f"{name} is the base model; it cannot be unloaded", param="name")
    tests = [test for test, arms in state.ab_tests.items() if name in arms]
    if tests:
        raise ApiError(409, f"{name} is an arm of the A/B test {', '.join(tests)}; end the test first", param="name")
    state.pool.served.pop(name)  # new requests for it get 404 from here on
    deadline = time.monotonic() + UNLOAD_WAIT_SECONDS
    while state.engine.busy_with(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    state.engine.cancel(name)

    await asyncio.wrap_future(state.engine.call(lambda: detach_now(state, name)))
    return {"id": name, "object": "model", "deleted": True}


# -- API keys -------------------------------------------------------------------------------------------------

@router.get("/v1/admin/keys")
async def keys(request: Request):
    return {"object": "list", "data": await in_registry(request, list_keys)}


@router.post("/v1/admin/keys", status_code=201)
async def new_key(body: KeyCreate, request: Request):
    def create(session):
        row, key = create_key(session, body.name, body.role)
        return {"id": row.id, "name": row.name, "role": row.role, "key": key}

    created = await in_registry(request, create)
    request.state.audit = {"key": created["id"], "role": created["role"]}
    return created


@router.delete("/v1/admin/keys/{key_id}")
async def revoke(key_id: str, request: Request):
    revoked = await in_registry(request, lambda session: revoke_key(session, key_id).id)
    state = server(request)
    if state.keys is not None:
        state.keys.forget(revoked)
    return {"id": revoked, "revoked": True}


# -- A/B tests ------------------------------------------------------------------------------------------------

@router.get("/v1/ab")
async def ab_tests(request: Request):
    return {"object": "list", "data": await in_registry(request, list_ab_tests)}


@router.get("/v1/ab/{name}")
async def ab_results(name: str, request: Request):
    server(request).responses.flush()  # the latest answers count
    return await in_registry(request, lambda session: ab_report(session, name))


@router.post("/v1/ab", status_code=201)
async def start_ab(body: AbStart, request: Request):
    state = server(request)
    if body.name in state.pool.served or body.name in state.ab_tests:
        raise ApiError(409, f"{body.name!r} is already a served model or a running A/B test; pick another name",
                       param="name")
    missing = [arm for arm in body.arms if arm not in state.pool.served]
    if missing:
        raise ApiError(404, f"A/B test {body.name!r}: {', '.join(map(repr, missing))} not served here "
                            f"(served: {', '.join(state.pool.served)})", param="arms")
    creator = request.state.principal.key_id
    arms = await in_registry(request, lambda session: dict(start_ab_test(session, body.name, body.arms,
                                                                         created_by=creator).arms))
    state.ab_tests[body.name] = arms
    request.state.audit = {"name": body.name, "arms": sorted(arms)}
    return {"name": body.name, "arms": arms}


@router.delete("/v1/ab/{name}")
async def end_ab(name: str, request: Request):
    await in_registry(request, lambda session: end_ab_test(session, name))
    server(request).ab_tests.pop(name, None)
    return {"name": name, "ended": True}


async def in_registry(request: Request, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one registry transaction, on a worker thread: the event loop never waits on it."""
    state = server(request)

    def run() -> T:
        with state.registry.session() as session:
            return work(session)

    return await anyio.to_thread.run_sync(run)
