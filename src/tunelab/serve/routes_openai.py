"""The routes users call: models, chat and text completions, feedback, and the health probes."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tunelab.registry.schema import ServedResponse
from tunelab.registry.serving import record_feedback
from tunelab.serve.app import ServerState, subject_of
from tunelab.serve.completions import (chat_body, chat_prompt, chat_stream, collect, completion_body,
                                       completion_stream, sampling_for, start_job)
from tunelab.serve.errors import ApiError
from tunelab.serve.protocol import ChatRequest, CompletionRequest, FeedbackRequest

router = APIRouter()
ANSWERS = {200: {"description": "the answer, or with stream: true its chunks as server-sent events",
                 "content": {"application/json": {}, "text/event-stream": {}}}}


def server(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/health")
@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD too
async def health():
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "the engine has not started yet: {\"status\": \"starting\"}"}})
@router.head("/ready", include_in_schema=False)
async def ready(request: Request):
    state = server(request)
    if not state.engine.thread.is_alive():
        return JSONResponse({"status": "starting"}, status_code=503)
    return {"status": "ready", "models": list(state.pool.served), "queue_depth": state.engine.queue_depth,
            "running": state.engine.running}


@router.get("/v1/models")
async def list_models(request: Request):
    state = server(request)
    models = [model_card(s) for s in state.pool.served.values()]
    models += [{"id": name, "object": "model", "created": 0, "owned_by": "tunelab", "root": None, "parent": None,
                "ab_test": {"arms": arms}} for name, arms in state.ab_tests.items()]
    return {"object": "list", "data": models}


@router.get("/v1/models/{name:path}")  # a base served by its hub id has a slash in its name, as in vLLM
async def get_model(name: str, request: Request):
    return model_card(server(request).pool.get(name))


def model_card(served) -> dict:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "tunelab",
            "root": served.source, "parent": served.parent, "version": served.version,
            "max_model_len": served.max_length}


@router.post("/v1/chat/completions", responses=ANSWERS)
async def chat_completions(body: ChatRequest, request: Request):
    state = server(request)
    principal = request.state.principal
    served, test, arm = state.route(body.model, subject_of(principal, body.user))
    prompt = chat_prompt(served, body)
    ids = served.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    sampling = sampling_for(body, served, len(ids), state.limits, body.logprobs, top)
    response_format = body.response_format.as_dict() if body.response_format else None
    job = await start_job(state.engine, served, body.model, "chat", [ids], sampling, body.n, response_format)
    messages = [m.as_dict() for m in body.messages]

    def finished(job, outcome):
        state.finished(job, outcome, principal=principal, user=body.user, prompt=messages, test=test, arm=arm)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(chat_stream(job, body.logprobs, include_usage, finished),
                                 media_type="text/event-stream")
    outcome = await until_done_or_gone(request, job, collect(job))
    finished(job, outcome)
    return chat_body(job, outcome, body.logprobs)


@router.post("/v1/completions", responses=ANSWERS)
async def completions(body: CompletionRequest, request: Request):
    state = server(request)
    principal = request.state.principal
    if body.echo or body.suffix:
        raise ApiError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
    served, test, arm = state.route(body.model, subject_of(principal, body.user))
    prompts = [served.tokenizer(p, add_special_tokens=False)["input_ids"] for p in body.prompts]
    if not prompts or not all(prompts):
        raise ApiError(400, "every prompt needs at least one token", param="prompt")
    logprobs = body.logprobs is not None
    sampling = sampling_for(body, served, max(map(len, prompts)), state.limits, logprobs, body.logprobs or 0)
    response_format = body.response_format.as_dict() if body.response_format else None
    job = await start_job(state.engine, served, body.model, "completion", prompts, sampling, body.n, response_format)

    def finished(job, outcome):
        state.finished(job, outcome, principal=principal, user=body.user, prompt=body.prompts, test=test, arm=arm)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(completion_stream(job, logprobs, include_usage, finished),
                                 media_type="text/event-stream")
    outcome = await until_done_or_gone(request, job, collect(job))
    finished(job, outcome)
    return completion_body(job, outcome, logprobs)


async def until_done_or_gone(request: Request, job, work):
    """Await ``work``; if the client disconnects first, free the job's rows and stop. An error of ``work``
    (an ApiError) is raised as itself, not inside the task group's ExceptionGroup, which no handler knows."""
    result, failure = None, None

    async def run(scope: anyio.CancelScope):
        nonlocal result, failure
        try:
            result = await work
        except Exception as error:
            failure = error
        scope.cancel()

    async def watch(scope: anyio.CancelScope):
        while not await request.is_disconnected():
            await anyio.sleep(0.25)
        for s in job.sequences:
            s.cancelled = True
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run, group.cancel_scope)
        group.start_soon(watch, group.cancel_scope)
    if failure is not None:
        raise failure
    if result is None:
        raise ApiError(499, "the client went away")
    return result


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request):
    state = server(request)
    principal = request.state.principal

    def store():
        state.responses.flush()  # the response may still be queued for the registry
        with state.registry.session() as session:
            response = session.get(ServedResponse, body.response_id)
            mine = response is not None and (principal.role == "admin" or response.key_id == principal.key_id)
            if not mine:  # another key's responses are not this caller's to rate, nor to know about
                raise ApiError(404, f"no response {body.response_id!r} for this key", param="response_id")
            row = record_feedback(session, body.response_id, rating=body.rating, score=body.score,
                                  corrected=body.corrected, comment=body.comment, key_id=principal.key_id)
            return row.id

    feedback_id = await anyio.to_thread.run_sync(store)
    return {"id": feedback_id, "object": "feedback", "response_id": body.response_id}
