"""The Playground: one chat prompt, answered side by side by the base model and its adapters, streamed.

The dashboard holds no model: it calls a ``tunelab serve`` (``tunelab ui --server URL``, or the very
server it is mounted on with ``tunelab serve --ui``) with the logged-in session's own API key, so the
server's roles, limits, logs and A/B tests apply as they do to any client. The browser never sees the
key: it opens one stream per chosen model on this app, which relays the server's server-sent events as
they arrive, so the columns fill in at once, token by token. Whatever goes wrong at the server (an
unknown model, a refused key, a server that is down) comes back as one error event for that column.

A trainer or admin can also load a model into that server from here, so that a version just promoted on the
Models page can be tried at once: the form offers the registry's versions and aliases (``NAME@production``,
``NAME@2``) and the finished adapter runs on the served base, and the dashboard passes the choice on to the
server's ``POST /v1/admin/adapters`` with the session's key. The server decides (its adapter roots, the base
the adapter was trained on, erasure taint): the dashboard only relays its answer, or its one-line refusal.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.registry.db import Registry
from tunelab.registry.models import list_models, show_model
from tunelab.registry.queries import list_runs
from tunelab.security.roles import FEEDBACK, GENERATE, MANAGE_ADAPTERS
from tunelab.ui.render import page
from tunelab.ui.sessions import Session, needs

router = APIRouter()

NO_SERVER = "No model server to talk to: start `tunelab serve --ui`, or `tunelab ui --server URL`."
CONNECT_SECONDS = 5.0
ANSWER_SECONDS = 300.0  # the longest wait between two chunks of one answer
LOAD_SECONDS = 300.0  # loading an adapter (and the server's parity check on it) on a busy server
RUNS_OFFERED = 50  # the newest finished adapter runs the load form lists
DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly."


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=100_000)


class StreamAsk(BaseModel):
    """One column's request: the model and what to send it (the server checks the values' ranges)."""
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=300)
    messages: list[Turn] = Field(min_length=1, max_length=64)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def upstream_body(self) -> dict:
        """The chat completion request for the server: streamed, with the token count at the end."""
        turns = [turn.model_dump() for turn in self.messages if turn.role != "system" or turn.content.strip()]
        body = {"model": self.model, "messages": turns, "stream": True, "stream_options": {"include_usage": True}}
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                    "seed": self.seed}
        return {**body, **{name: value for name, value in sampling.items() if value is not None}}


class LoadAsk(BaseModel):
    """What to load and under which name (the server checks the name's characters and the source)."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=4096)


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=64)
    rating: str = Field(pattern="^(up|down)$")


async def parsed(request: Request, model: type[BaseModel]):
    """The JSON body as ``model``, or a 400 JSON error naming the first field that is wrong."""
    try:
        return model.model_validate(await request.json())
    except ValueError as error:  # not JSON at all, or a ValidationError
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            message = f"{where}: {first['msg']}"
        else:
            message = "the body must be JSON"
        return JSONResponse({"error": {"message": message}}, status_code=400)


def error_event(message: str) -> str:
    """One server-sent event carrying an error, in the shape the server itself uses mid-stream."""
    return f"data: {json.dumps({'error': {'message': message}})}\n\n"


def server_message(status: int, body: bytes) -> str:
    """The one line a server's 4xx/5xx answer says (its ``error.message``), or its status."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()[:300] or "no details"
    return f"the server answered {status}: {message}"


def unreachable(server: str, error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"the server at {server} did not answer in time"
    return f"the server at {server} is not reachable ({type(error).__name__}); is tunelab serve running?"


def bearer(session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {session.key}"}


async def served_models(server: str, session: Session) -> tuple[list[dict], str | None]:
    """The server's models as the checkboxes list them (base first, then adapters, then A/B tests), or
    ([], why not) in one line."""
    try:
        async with httpx.AsyncClient(timeout=CONNECT_SECONDS) as client:
            answer = await client.get(f"{server}/v1/models", headers=bearer(session))
    except httpx.HTTPError as error:
        return [], unreachable(server, error)
    if answer.status_code >= 400:
        return [], server_message(answer.status_code, answer.content)
    try:
        models = [{"id": card["id"], "kind": kind_of(card), "version": card.get("version")}
                  for card in answer.json()["data"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [], f"{server}/v1/models did not answer with a model list: is that URL a tunelab serve?"
    order = {"base": 0, "adapter": 1, "A/B test": 2}
    return sorted(models, key=lambda m: order[m["kind"]]), None


def kind_of(card: dict) -> str:
    if card.get("ab_test"):
        return "A/B test"
    return "adapter" if card.get("parent") else "base"


def base_of(models: list[dict]) -> str | None:
    return next((m["id"] for m in models if m["kind"] == "base"), None)


def loadable(registry: Registry, base: str | None) -> list[dict]:
    """The load form's choices in groups ({label, choices}): each registered model's aliases then its versions,
    newest first, then the newest finished runs with an adapter. Versions and runs trained on another base than
    the server's are left out: the server would refuse them."""
    with registry.session() as db:
        runs = {run["id"]: run for run in list_runs(db)}
        models = [show_model(db, listed["name"]) for listed in list_models(db)]
    groups = [{"label": f"model {model['name']}", "choices": version_choices(model, runs, base)} for model in models]
    finished = [run for run in runs.values() if run["status"] == "finished" and servable(run, base)][:RUNS_OFFERED]
    groups.append({"label": f"finished runs on {base}" if base else "finished runs",
                   "choices": [choice(run["path"], f"{run['name']} · run {run['id'][:8]}", run["name"])
                               for run in finished]})
    return [group for group in groups if group["choices"]]


def version_choices(model: dict, runs: dict[str, dict], base: str | None) -> list[dict]:
    """``NAME@ALIAS`` for each alias, then ``NAME@N`` for each version, newest first (``show_model``'s dict)."""
    name = model["name"]
    versions = [v for v in reversed(model["versions"]) if servable(runs.get(v["run_id"]), base)]
    numbers = {v["version"] for v in versions}
    by_alias = [choice(f"{name}@{alias}", f"{name}@{alias} · v{number}", name, number)
                for alias, number in model["aliases"].items() if number in numbers]
    return by_alias + [choice(f"{name}@{v['version']}", f"{name}@{v['version']} · run {v['run']}", name, v["version"])
                       for v in versions]


def choice(source: str, label: str, name: str, version: int | None = None) -> dict:
    """One option: what to send as the source, what the select shows, and the served name to suggest (the page
    suggests NAME-vN instead when NAME is served already)."""
    return {"source": source, "label": label, "name": name, "version": version}


def servable(run: dict | None, base: str | None) -> bool:
    """A run (``list_runs``' dict) the server could load: an adapter trained on its base."""
    return (run is not None and (base is None or run["base_model"] == base)
            and (Path(run["path"]) / "adapter").is_dir())


@router.get("/ui/playground")
async def playground_page(request: Request, session: Session = Depends(needs(GENERATE))):
    server = request.app.state.ui.server_url(request)
    models, problem = await served_models(server, session) if server else ([], None)
    can_load = bool(server and not problem and session.can(MANAGE_ADAPTERS))
    choices = await anyio.to_thread.run_sync(loadable, request.app.state.ui.registry, base_of(models)) \
        if can_load else []
    return page(request, "playground.html", session, title="Playground", server=server, models=models,
                problem=problem, default_system=DEFAULT_SYSTEM, can_load=can_load, load_choices=choices)


@router.post("/ui/api/playground/stream")
async def stream_answer(request: Request, session: Session = Depends(needs(GENERATE))):
    ask = await parsed(request, StreamAsk)
    if isinstance(ask, JSONResponse):
        return ask
    server = request.app.state.ui.server_url(request)
    if server is None:
        return JSONResponse({"error": {"message": NO_SERVER}}, status_code=409)
    return StreamingResponse(relay(server, ask.upstream_body(), session), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def relay(server: str, body: dict, session: Session) -> AsyncIterator[str]:
    """The server's chunks as they come, one ``data:`` line each; a refusal or a dead server as one error event."""
    timeout = httpx.Timeout(ANSWER_SECONDS, connect=CONNECT_SECONDS)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            async with client.stream("POST", f"{server}/v1/chat/completions", json=body,
                                     headers=bearer(session)) as answer:
                if answer.status_code >= 400:
                    yield error_event(server_message(answer.status_code, await answer.aread()))
                    return
                async for line in answer.aiter_lines():
                    if line.startswith("data:"):
                        yield line + "\n\n"
    except httpx.HTTPError as error:
        yield error_event(unreachable(server, error))


@router.post("/ui/api/playground/feedback")
async def rate_answer(request: Request, session: Session = Depends(needs(FEEDBACK))):
    """A thumbs up or down on one answer, recorded by the server (``POST /v1/feedback``) as this key's."""
    rating = await parsed(request, Rating)
    if isinstance(rating, JSONResponse):
        return rating
    answer = await call_server(request, session, "/v1/feedback", rating.model_dump(), CONNECT_SECONDS * 4)
    if isinstance(answer, JSONResponse):
        return answer
    return {"ok": True, "rating": rating.rating}


@router.post("/ui/api/playground/load")
async def load_model(request: Request, session: Session = Depends(needs(MANAGE_ADAPTERS))):
    """Load a registry version (``NAME@ALIAS``, ``NAME@N``) or a run folder into the server under ``name``
    (``POST /v1/admin/adapters``). Answers the server's model card and the served models as the page lists
    them, or the server's refusal in one line with its status."""
    ask = await parsed(request, LoadAsk)
    if isinstance(ask, JSONResponse):
        return ask
    answer = await call_server(request, session, "/v1/admin/adapters", ask.model_dump(),
                               httpx.Timeout(LOAD_SECONDS, connect=CONNECT_SECONDS))
    if isinstance(answer, JSONResponse):
        return answer
    models, problem = await served_models(request.app.state.ui.server_url(request), session)
    return {"loaded": answer.json(), "models": models, "problem": problem}


async def call_server(request: Request, session: Session, path: str, body: dict,
                      timeout: float | httpx.Timeout) -> httpx.Response | JSONResponse:
    """POST ``body`` to the server's ``path`` with the session's key: its answer, or a JSON error in one line (the
    server's 4xx status as it is, 502 for its 5xx and for a server that does not answer)."""
    server = request.app.state.ui.server_url(request)
    if server is None:
        return JSONResponse({"error": {"message": NO_SERVER}}, status_code=409)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            answer = await client.post(f"{server}{path}", json=body, headers=bearer(session))
    except httpx.HTTPError as error:
        return JSONResponse({"error": {"message": unreachable(server, error)}}, status_code=502)
    if answer.status_code >= 400:
        message = " ".join(server_message(answer.status_code, answer.content).split())  # one line
        return JSONResponse({"error": {"message": message}},
                            status_code=answer.status_code if answer.status_code < 500 else 502)
    return answer
