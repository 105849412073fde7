"""Golden prompts: a run's held-out prompts, and the check a server runs when it loads an adapter.

``--parity-check`` sends the first few held-out prompts of each adapter's run through the engine (the
batched, mixed-adapter path requests take) and through ``inference.generate`` on the same weights
(the path ``tunelab eval`` takes), greedily. An adapter whose answers differ is refused, before any
client sees it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tunelab.data.formats import read_records
from tunelab.data.templates import prompt_text, record_to_messages, to_messages
from tunelab.errors import TunelabError
from tunelab.inference.generate import generate
from tunelab.modeling.load import load_tokenizer
from tunelab.runs.folder import RunFolder
from tunelab.serve.engine import sequences_for
from tunelab.serve.sampling import Sampling

GOLDEN_PROMPTS = 4
CHECK_SECONDS = 300


@dataclass
class Case:
    shown: str  # the input as the user wrote it
    messages: list[dict]  # what a client sends (the run's system prompt is the server's to add)
    prompt: str  # the rendered prompt eval generates from
    reference: str | None


def cases_of(run: RunFolder, limit: int) -> list[Case]:
    """The run's first ``limit`` held-out chat or labeled rows, as a client sends them and as eval renders them."""
    config = run.config()
    if not run.eval_set_path.is_file():
        raise TunelabError(f"{run.path} has no eval_set.jsonl (the held-out rows); train it with this tunelab "
                           "version or run tunelab eval on it first")
    records = [r for r in read_records(run.eval_set_path, on_error="quarantine")[0] if r.kind != "text"][:limit]
    if not records:
        raise TunelabError(f"{run.path}'s eval set has no prompts (a pretraining run?); the check needs chat or "
                           "labeled rows")
    choices = run.labels(config)
    tokenizer = load_tokenizer(run.weights_dir)  # the run's own tokenizer, as load_run loads it
    cases = []
    for record in records:
        full = to_messages(record, choices, config.data.label_prompt, config.data.system_prompt)
        plain = record_to_messages(record, config.data.label_prompt, choices)
        last = max(i for i, m in enumerate(plain) if m["role"] == "assistant")
        shown = record.text if record.kind == "labeled" else plain[last - 1]["content"]
        cases.append(Case(shown, plain[:last], prompt_text(tokenizer, full), plain[last]["content"]))
    return cases


def check_loaded_adapter(state, name: str, limit: int = GOLDEN_PROMPTS) -> None:
    """Raise ``TunelabError`` unless the served adapter ``name`` answers its run's golden prompts as eval does.

    Blocks until done: call it from a worker thread, with the engine running."""
    served = state.pool.get(name)
    run = RunFolder(served.source)
    cases = cases_of(run, limit)
    new_tokens = run.config().eval.max_new_tokens
    prompts = [c.prompt for c in cases]

    def eval_path():
        state.pool.model.set_adapter(name)
        return generate(state.pool.model, served.tokenizer, prompts, new_tokens, desc=f"{name}: parity check")

    expected = state.engine.call(eval_path).result(timeout=CHECK_SECONDS)
    got = through_engine(state.engine, served, prompts, new_tokens)
    for case, want, have in zip(cases, expected, got):
        if want != have.strip():
            raise TunelabError(f"{name} failed its parity check on {case.shown!r}: eval answers {want!r}, the server "
                               f"{have.strip()!r} (see tunelab parity {run.path})")


def through_engine(engine, served, prompts: list[str], new_tokens: int) -> list[str]:
    """Greedy answers to ``prompts`` through the engine, as requests get them."""
    texts, left, done = [""] * len(prompts), [len(prompts)], threading.Event()
    lock = threading.Lock()

    def emit(event):
        with lock:
            texts[event.index] += event.text
            if event.finish or event.error:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    sequences = []
    for i, prompt in enumerate(prompts):
        ids = served.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sequences += sequences_for(ids, Sampling(max_tokens=new_tokens, temperature=0.0), 1,
                                   tokenizer=served.tokenizer, eos=served.eos, emit=emit,
                                   max_length=served.max_length, adapter=served.adapter, first_index=i)
    engine.submit(sequences)
    if not done.wait(CHECK_SECONDS):
        raise TunelabError(f"the parity check of {served.name} took over {CHECK_SECONDS} s")
    return texts
