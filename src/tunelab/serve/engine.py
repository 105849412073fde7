"""Continuous batching: one thread runs the model; requests join and leave at decode-step boundaries.

Each loop turn: run queued admin calls (adapter loads), drop cancelled or finished rows, prefill the
newly admitted requests as one group and join them to the running batch, then one decode step for
every row. Rows of different adapters share the batch through peft's ``adapter_names`` (one name
per row; ``__base__`` for the base model). The event loop never waits on the model: it submits
``Sequence`` objects and receives their ``Event``s through each sequence's ``emit`` callback.

The waiting queue is bounded: ``submit`` raises ``QueueFull`` (the server's 429) instead of
letting latency grow without limit.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from tunelab.inference.generate import contiguous_head_input
from tunelab.serve.batch_cache import BatchCache
from tunelab.serve.sampling import Sampling, TokenChoice, choose, generator_for
from tunelab.serve.text import TextStream

log = logging.getLogger(__name__)
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class QueueFull(Exception):
    """More requests wait than the queue holds."""


@dataclass
class Event:
    """What one choice produced in one step: text safe to send, its tokens, and maybe the end."""

    index: int
    text: str = ""
    tokens: list[TokenChoice] = field(default_factory=list)
    finish: str | None = None  # "stop" or "length" on the last event of a choice
    completion_tokens: int = 0
    error: str | None = None  # the model failed; the request gets a server error


@dataclass
class Sequence:
    """One choice of one request, from prompt tokens to its last event."""

    prompt: list[int]
    sampling: Sampling
    stream: TextStream
    eos: frozenset[int]
    emit: Callable[[Event], None]
    max_length: int  # prompt plus generated tokens never exceed this (the model's context)
    adapter: str | None = None
    index: int = 0
    constraint: object | None = None  # serve.constrained.Constraint
    generator: torch.Generator | None = None
    generated: int = 0
    cancelled: bool = False
    finished: bool = False
    submitted: float = field(default_factory=time.monotonic)

    @property
    def reserve(self) -> int:
        """Cache columns this choice can take at most."""
        return min(self.max_length, len(self.prompt) + self.sampling.max_tokens)


def sequences_for(prompt: list[int], sampling: Sampling, n: int, *, tokenizer, eos: frozenset[int],
                  emit: Callable[[Event], None], max_length: int, adapter: str | None = None,
                  constraint: Callable[[], object | None] = lambda: None, first_index: int = 0) -> list[Sequence]:
    """The ``n`` choices of one prompt (numbered from ``first_index``), each with its own text stream, grammar
    state and random stream."""
    return [Sequence(prompt, sampling, TextStream(tokenizer, sampling.stop), eos, emit, max_length, adapter,
                     index=first_index + i, constraint=constraint(), generator=generator_for(sampling, i))
            for i in range(n)]


class Engine:
    """The model's one thread and its batch. ``max_batch`` 1 turns batching off."""

    def __init__(self, model, *, max_batch: int = 32, max_queue: int = 64, max_batch_tokens: int = 65536,
                 max_prefill_tokens: int = 4096, observe_batch: Callable[[int, int], None] | None = None):
        """``observe_batch(rows, adapters)`` is told each decode step's rows and how many models they use."""
        self.model = model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_batch_tokens, self.max_prefill_tokens = max_batch_tokens, max_prefill_tokens
        self.observe_batch = observe_batch
        self.waiting: deque[Sequence] = deque()
        self.rows: list[Sequence] = []
        self.cache: BatchCache | None = None
        self.next_tokens: list[int] = []
        self.calls: deque[tuple[Callable[[], object], concurrent.futures.Future]] = deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)

    # -- the server's side (any thread) --------------------------------------------------------------

    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=30)

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue the choices of one request, all or none."""
        with self.wake:
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} choices are waiting (the queue holds {self.max_queue})")
            self.waiting.extend(sequences)
            self.wake.notify()

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run ``fn`` on the model's thread between two steps (loading or removing an adapter)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.wake:
            self.calls.append((fn, future))
            self.wake.notify()
        return future

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        return len(self.rows)

    def busy_with(self, adapter: str) -> bool:
        with self.wake:  # the queue changes under the model's thread
            return any(s.adapter == adapter for s in [*self.rows, *self.waiting])

    def cancel(self, adapter: str) -> None:
        """End every choice for ``adapter`` at the next step (queued ones are never started)."""
        with self.wake:
            for s in [*self.rows, *self.waiting]:
                if s.adapter == adapter:
                    s.cancelled = True

    # -- the model's thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        with contiguous_head_input(self.model), torch.inference_mode():
            while True:
                with self.wake:
                    while not (self.rows or self.waiting or self.calls or self.stopping):
                        self.wake.wait()
                    if self.stopping:
                        return
                try:
                    self._step()
                except Exception as error:  # the model failed: end every request in flight, keep serving
                    log.exception("generation failed")
                    self._fail_all(f"generation failed: {type(error).__name__}: {error}")

    def _step(self) -> None:
        self._run_calls()
        self._drop_done()
        joining = self._admit()
        if joining:
            self._prefill(joining)
        self._drop_done()
        if self.rows:
            self._decode()

    def _run_calls(self) -> None:
        while self.calls:
            fn, future = self.calls.popleft()
            try:
                future.set_result(fn())
            except Exception as error:
                future.set_exception(error)

    def _admit(self) -> list[Sequence]:
        """Waiting choices that fit: the batch's row limit, its token budget and one prefill's tokens."""
        joining: list[Sequence] = []
        reserved = sum(s.reserve for s in self.rows)
        prefill = 0
        with self.wake:
            while self.waiting and len(self.rows) + len(joining) < self.max_batch:
                candidate = self.waiting[0]
                if candidate.cancelled:
                    self.waiting.popleft()
                    continue
                fits = reserved + candidate.reserve <= self.max_batch_tokens
                fits = fits and prefill + len(candidate.prompt) <= self.max_prefill_tokens
                if not fits and (self.rows or joining):
                    break
                joining.append(self.waiting.popleft())
                reserved += candidate.reserve
                prefill += len(candidate.prompt)
        return joining

    def _prefill(self, joining: list[Sequence]) -> None:
        width = max(len(s.prompt) for s in joining)
        input_ids = torch.zeros((len(joining), width), dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for row, s in enumerate(joining):
            input_ids[row, width - len(s.prompt):] = torch.tensor(s.prompt)
            mask[row, width - len(s.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1, **self._adapter_names(joining))
        group = BatchCache(cache, mask)
        if self.cache is None:
            self.cache = group
        else:
            self.cache.join(group)
        self.rows.extend(joining)
        self.next_tokens.extend([0] * len(joining))
        self._take(out.logits[:, -1], first=len(self.rows) - len(joining))

    def _decode(self) -> None:
        if self.observe_batch:
            self.observe_batch(len(self.rows), len({s.adapter for s in self.rows}))
        mask = self.cache.extend_mask()
        positions = torch.tensor([[len(s.prompt) + s.generated - 1] for s in self.rows])
        out = self.model(input_ids=torch.tensor(self.next_tokens).unsqueeze(1), attention_mask=mask,
                         position_ids=positions, past_key_values=self.cache.cache, use_cache=True,
                         **self._adapter_names(self.rows))
        self._take(out.logits[:, -1], first=0)

    def _take(self, logits: torch.Tensor, first: int) -> None:
        """Choose the next token of rows ``first``... (one row of ``logits`` each) and pass it on."""
        rows = self.rows[first:]
        allowed = [s.constraint.allowed() if s.constraint is not None else None for s in rows]
        choices = choose(logits, [s.sampling for s in rows], [s.generator for s in rows], allowed)
        for offset, (s, choice) in enumerate(zip(rows, choices)):
            self.next_tokens[first + offset] = choice.token
            self._accept(s, choice)

    def _accept(self, s: Sequence, choice: TokenChoice) -> None:
        s.generated += 1
        if choice.token in s.eos:
            return self._finish(s, "stop")
        if s.constraint is not None:
            s.constraint.accept(choice.token)
        text = s.stream.push(choice.token)
        s.emit(Event(s.index, text, [choice]))
        if s.stream.stopped or (s.constraint is not None and s.constraint.done()):
            self._finish(s, "stop")
        elif s.generated >= s.sampling.max_tokens or len(s.prompt) + s.generated >= s.max_length:
            self._finish(s, "length")

    def _finish(self, s: Sequence, reason: str) -> None:
        s.finished = True
        tail = "" if s.stream.stopped else s.stream.finish()
        s.emit(Event(s.index, tail, finish=reason, completion_tokens=s.generated))

    def _drop_done(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if not (s.finished or s.cancelled)]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.next_tokens = [self.next_tokens[i] for i in keep]
        if keep:
            self.cache.keep(keep)
        else:
            self.cache = None

    def _fail_all(self, message: str) -> None:
        for s in self.rows:
            if not s.finished:
                s.finished = True
                s.emit(Event(s.index, error=message))
        self.rows, self.next_tokens, self.cache = [], [], None

    def _adapter_names(self, rows: list[Sequence]) -> dict:
        if not getattr(self.model, "peft_config", None):
            return {}
        return {"adapter_names": [s.adapter or BASE for s in rows]}
