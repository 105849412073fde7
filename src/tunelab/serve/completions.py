"""Serving one chat or completion request: prompt to tokens, choices to the engine, events to an
OpenAI response (one JSON body, or server-sent events in OpenAI's chunk format ending with ``[DONE]``).

A chat prompt is rendered by the served model's own chat template, with its run's system prompt when
the request has none: ``data.templates.render``, the code training and ``tunelab eval`` use, so an
adapter sees the text it was trained and evaluated on.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio

from tunelab.data.templates import render, with_system_prompt
from tunelab.serve.constrained import constraint_for
from tunelab.serve.engine import Event, QueueFull, sequences_for
from tunelab.serve.errors import ApiError, error_body
from tunelab.serve.pool import Served
from tunelab.serve.protocol import ChatRequest, CompletionRequest
from tunelab.serve.sampling import Sampling, TokenChoice

RETRY_AFTER_SECONDS = 1


@dataclass
class Limits:
    max_tokens: int = 2048  # largest max_tokens a request may ask for
    max_n: int = 8
    default_max_tokens: int = 512  # when a request gives none (and the context leaves room)


@dataclass
class Job:
    """One request in flight: its choices' events arrive on ``queue`` from the engine's thread."""

    id: str
    endpoint: str  # "chat" or "completion"
    served: Served
    asked: str  # the model name the client sent (an A/B test's name, or the served model's)
    prompt_tokens: int
    choices: int
    queue: asyncio.Queue
    sequences: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    async def events(self) -> AsyncIterator[Event]:
        """Every event until each choice has ended; leaving early (a client gone) frees the choices' rows."""
        left = self.choices
        try:
            while left:
                event = await self.queue.get()
                if self.first_token is None and (event.tokens or event.finish):
                    self.first_token = time.monotonic() - self.started
                if event.finish or event.error:
                    left -= 1
                yield event
        finally:
            for s in self.sequences:
                s.cancelled = s.cancelled or not s.finished


@dataclass
class Outcome:
    """What a finished job produced, per choice."""

    texts: list[str]
    finish: list[str | None]
    tokens: list[list[TokenChoice]]
    completion_tokens: int


def chat_prompt(served: Served, request: ChatRequest) -> str:
    messages = with_system_prompt([m.as_dict() for m in request.messages], served.system_prompt)
    if messages[-1]["role"] == "assistant":
        raise ApiError(400, "the last message is the assistant's; end with a user message", param="messages")
    try:
        return render(served.tokenizer, messages, add_generation_prompt=True)
    except Exception as error:  # a template's own raise_exception(), or a Jinja error on odd input
        raise ApiError(400, f"the chat template of {served.name} rejected the messages: {error}",
                       param="messages") from None


def sampling_for(request: ChatRequest | CompletionRequest, served: Served, prompt_tokens: int, limits: Limits,
                 logprobs: bool, top_logprobs: int) -> Sampling:
    """The request's decoding settings, within the server's caps and the model's context."""
    if request.n > limits.max_n:
        raise ApiError(400, f"n is {request.n}; this server allows at most {limits.max_n}", param="n")
    room = served.max_length - prompt_tokens
    if room < 1:
        raise ApiError(400, f"the prompt has {prompt_tokens} tokens; {served.name} takes at most "
                            f"{served.max_length - 1} (leave room for the answer)", param="messages",
                       code="context_length_exceeded")
    asked = request.token_limit
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {asked}; this server allows at most {limits.max_tokens}",
                       param="max_tokens")
    if asked is not None and asked > room:
        raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({asked}) exceeds the context of "
                            f"{served.name} ({served.max_length} tokens)", param="max_tokens",
                       code="context_length_exceeded")
    return Sampling(max_tokens=asked or min(limits.default_max_tokens, room), temperature=request.temperature,
                    top_p=request.top_p, stop=request.stops, seed=request.seed, logprobs=logprobs,
                    top_logprobs=top_logprobs)


async def start_job(engine, served: Served, asked: str, endpoint: str, prompts: list[list[int]], sampling: Sampling,
                    n: int, response_format: dict | None) -> Job:
    """Queue every choice of the request (429 when the queue is full)."""
    vocab = engine.model.get_output_embeddings().weight.shape[0]  # the logits' width, past the tokenizer's
    if response_format is not None:  # a bad schema is a 400 now; the first use of a tokenizer or schema compiles
        await anyio.to_thread.run_sync(constraint_for, response_format, served.tokenizer, sorted(served.eos), vocab)
    loop = asyncio.get_running_loop()
    job = Job(f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{secrets.token_hex(12)}", endpoint, served, asked,
              sum(map(len, prompts)), n * len(prompts), asyncio.Queue())

    def emit(event: Event) -> None:
        loop.call_soon_threadsafe(job.queue.put_nowait, event)

    for p, ids in enumerate(prompts):
        job.sequences += sequences_for(
            ids, sampling, n, tokenizer=served.tokenizer, eos=served.eos, emit=emit, max_length=served.max_length,
            adapter=served.adapter, first_index=p * n,
            constraint=lambda: constraint_for(response_format, served.tokenizer, sorted(served.eos), vocab))
    try:
        engine.submit(job.sequences)
    except QueueFull as full:
        raise ApiError(429, f"the server is busy ({full}); retry after {RETRY_AFTER_SECONDS} s",
                       code="server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    return job


async def collect(job: Job) -> Outcome:
    outcome = None
    async for message, event, outcome in _tracked(job):
        if event is None:
            raise ApiError(500, message)
    return outcome


def usage(job: Job, completion_tokens: int) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": job.prompt_tokens + completion_tokens}


# -- chat -------------------------------------------------------------------------------------------------

def chat_body(job: Job, outcome: Outcome, logprobs: bool) -> dict:
    tokenizer = job.served.tokenizer
    return {"id": job.id, "object": "chat.completion", "created": job.created, "model": job.served.name,
            "system_fingerprint": job.served.system_fingerprint,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": chat_logprobs(tokenizer, outcome.tokens[i])} if logprobs else None,
                         "finish_reason": outcome.finish[i]} for i, text in enumerate(outcome.texts)],
            "usage": usage(job, outcome.completion_tokens)}


def chat_logprobs(tokenizer, tokens: list[TokenChoice]) -> list[dict]:
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [{**entry(t.token, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]} for t in tokens]


async def chat_stream(job: Job, logprobs: bool, include_usage: bool,
                      finished: Callable[[Job, Outcome], None]) -> AsyncIterator[str]:
    base = {"id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": job.served.name,
            "system_fingerprint": job.served.system_fingerprint}
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish: str | None = None, tokens=None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if logprobs and tokens:
            choice["logprobs"] = {"content": chat_logprobs(job.served.tokenizer, tokens)}
        return sse({**base, "choices": [choice], **extra})

    for index in range(job.choices):
        yield chunk(index, {"role": "assistant", "content": ""})
    async for text, event, outcome in _tracked(job):
        if event is None:
            yield sse({"error": error_body(500, text)["error"]})
            break
        if text or event.tokens:
            yield chunk(event.index, {"content": text} if text else {}, tokens=event.tokens)
        if event.finish:
            yield chunk(event.index, {}, event.finish)
    else:
        finished(job, outcome)
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(job, outcome.completion_tokens)})
    yield "data: [DONE]\n\n"


# -- completions (the legacy API) -------------------------------------------------------------------------

def completion_body(job: Job, outcome: Outcome, logprobs: bool) -> dict:
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": job.served.name,
            "system_fingerprint": job.served.system_fingerprint,
            "choices": [{"index": i, "text": text, "finish_reason": outcome.finish[i],
                         "logprobs": completion_logprobs(job.served.tokenizer, outcome.tokens[i]) if logprobs else None}
                        for i, text in enumerate(outcome.texts)],
            "usage": usage(job, outcome.completion_tokens)}


def completion_logprobs(tokenizer, tokens: list[TokenChoice], offset: int = 0) -> dict:
    texts = [tokenizer.decode([t.token]) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{tokenizer.decode([i]): lp for i, lp in (t.top or [])} for t in tokens],
            "text_offset": offsets}


async def completion_stream(job: Job, logprobs: bool, include_usage: bool,
                            finished: Callable[[Job, Outcome], None]) -> AsyncIterator[str]:
    base = {"id": job.id, "object": "text_completion", "created": job.created, "model": job.served.name,
            "system_fingerprint": job.served.system_fingerprint}
    extra = {"usage": None} if include_usage else {}
    async for text, event, outcome in _tracked(job):
        if event is None:
            yield sse({"error": error_body(500, text)["error"]})
            break
        if text or event.tokens or event.finish:
            lp = completion_logprobs(job.served.tokenizer, event.tokens) if logprobs and event.tokens else None
            yield sse({**base, "choices": [{"index": event.index, "text": text, "logprobs": lp,
                                            "finish_reason": event.finish}], **extra})
    else:
        finished(job, outcome)
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(job, outcome.completion_tokens)})
    yield "data: [DONE]\n\n"


async def _tracked(job: Job) -> AsyncIterator[tuple[str, Event | None, Outcome]]:
    """The job's events with the outcome so far; (message, None, outcome) once if the model failed."""
    outcome = Outcome([""] * job.choices, [None] * job.choices, [[] for _ in range(job.choices)], 0)
    async for event in job.events():
        if event.error:
            yield event.error, None, outcome
            return
        outcome.texts[event.index] += event.text
        outcome.tokens[event.index] += event.tokens
        if event.finish:
            outcome.finish[event.index] = event.finish
            outcome.completion_tokens += event.completion_tokens
        yield event.text, event, outcome


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
