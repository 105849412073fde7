"""The continuous-batching engine: rows joining and leaving mid-generation get exactly what they get alone."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.modeling.fast import prepare_for_inference
from tunelab.serve.engine import Engine, QueueFull, sequences_for
from tunelab.serve.sampling import Sampling

PROMPTS = ["the movie was", "Hello! How are you", "a dull, tedious film with a terrible", "What is the capital of",
           "positive negative classify the following text"]


class Collector:
    """Gathers one request's events, as the server's emit callback does."""

    def __init__(self, n: int = 1):
        self.text = [""] * n
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.left = n
        self.done = threading.Event()

    def __call__(self, event):
        self.text[event.index] += event.text
        self.tokens[event.index] += [t.token for t in event.tokens]
        if event.finish or event.error:
            self.finish[event.index] = event.finish or event.error
            self.left -= 1
            if self.left == 0:
                self.done.set()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return tokenizer, model


def submit(engine, tokenizer, prompt, max_tokens=12, n=1, adapter=None, **sampling):
    collector = Collector(n)
    settings = Sampling(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    engine.submit(sequences_for(ids, settings, n, tokenizer=tokenizer, eos=frozenset({tokenizer.eos_token_id}),
                                emit=collector, max_length=512, adapter=adapter))
    return collector


def alone(model, tokenizer, prompt, max_tokens=12):
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    new = out[0, ids.shape[1]:].tolist()
    return [t for t in new if t != tokenizer.eos_token_id][:max_tokens]


def test_staggered_requests_get_their_greedy_answer_alone(tiny):
    tokenizer, model = tiny
    engine = Engine(model, max_batch=8).start()
    try:
        first = [submit(engine, tokenizer, p, max_tokens=20) for p in PROMPTS[:2]]
        assert first[0].done.wait(30)
        later = [submit(engine, tokenizer, p, max_tokens=5 + i) for i, p in enumerate(PROMPTS[2:])]
        for c in first + later:
            assert c.done.wait(30)
    finally:
        engine.stop()
    for prompt, c, limit in zip(PROMPTS, first + later, [20, 20, 5, 6, 7]):
        assert c.tokens[0] == alone(model, tokenizer, prompt, limit), prompt
        assert c.text[0] == tokenizer.decode(c.tokens[0], skip_special_tokens=True)
        assert c.finish[0] in ("length", "stop")


def test_mixed_adapters_in_one_batch_match_each_alone(tiny_model_dir, tiny):
    tokenizer, _ = tiny
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)
    prepare_for_inference(model.eval())
    plan = [("a", PROMPTS[0]), ("b", PROMPTS[0]), (None, PROMPTS[0]), ("b", PROMPTS[1]), ("a", PROMPTS[3])]
    engine = Engine(model, max_batch=8)
    collectors = [submit(engine, tokenizer, p, adapter=a) for a, p in plan]  # queued before start: one batch
    engine.start()
    try:
        for c in collectors:
            assert c.done.wait(30)
    finally:
        engine.stop()
    for (adapter, prompt), c in zip(plan, collectors):
        if adapter is None:
            with model.disable_adapter():
                expected = alone(model, tokenizer, prompt)
        else:
            model.set_adapter(adapter)
            expected = alone(model, tokenizer, prompt)
        assert c.tokens[0] == expected, adapter
    assert collectors[0].tokens != collectors[1].tokens != collectors[2].tokens


def test_seeded_sampling_repeats_and_n_choices_differ(tiny):
    tokenizer, model = tiny
    engine = Engine(model).start()
    try:
        runs = [submit(engine, tokenizer, PROMPTS[1], max_tokens=15, n=3, temperature=1.5, seed=7) for _ in range(2)]
        other = submit(engine, tokenizer, PROMPTS[1], max_tokens=15, n=3, temperature=1.5, seed=8)
        for c in [*runs, other]:
            assert c.done.wait(30)
    finally:
        engine.stop()
    assert runs[0].tokens == runs[1].tokens
    assert len({tuple(t) for t in runs[0].tokens}) > 1  # the n choices are different draws
    assert other.tokens != runs[0].tokens


def test_stop_string_ends_the_choice_and_never_leaks(tiny):
    tokenizer, model = tiny
    engine = Engine(model).start()
    try:
        free = submit(engine, tokenizer, PROMPTS[0], max_tokens=20)
        assert free.done.wait(30)
        text = free.text[0]
        stop = text[len(text) // 2: len(text) // 2 + 3]
        assert len(stop) == 3
        stopped = submit(engine, tokenizer, PROMPTS[0], max_tokens=20, stop=(stop,))
        assert stopped.done.wait(30)
    finally:
        engine.stop()
    assert stopped.text[0] == text[:text.index(stop)]
    assert stopped.finish[0] == "stop"


def test_full_queue_refuses_and_cancelled_rows_leave(tiny):
    tokenizer, model = tiny
    engine = Engine(model, max_batch=1, max_queue=2)
    first = submit(engine, tokenizer, PROMPTS[0], max_tokens=400)
    submit(engine, tokenizer, PROMPTS[1])
    with pytest.raises(QueueFull):
        submit(engine, tokenizer, PROMPTS[2])
    engine.start()
    try:
        while not first.tokens[0]:
            threading.Event().wait(0.01)
        engine.rows[0].cancelled = True  # what a client's disconnect does
        later = submit(engine, tokenizer, PROMPTS[3])
        assert later.done.wait(30)
    finally:
        engine.stop()
    assert first.finish[0] is None and len(first.tokens[0]) < 400


def test_extreme_but_valid_sampling_settings_still_pick_a_token():
    """top_p below float32's range used to zero every token (NaN probabilities: a failed step for the whole
    batch), and a seed past 64 bits to fail the request; both are valid requests."""
    from tunelab.serve.sampling import choose, generator_for

    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0]])
    for top_p in (8.75e-204, 1e-300, 5e-324):
        sampling = Sampling(max_tokens=1, temperature=1.0, top_p=top_p, seed=3)
        assert choose(logits, [sampling], [generator_for(sampling, 0)], [None])[0].token == 1  # the most likely
    for seed in (10 ** 30, -(10 ** 30), 2 ** 63):
        assert generator_for(Sampling(max_tokens=1, seed=seed), 0) is not None
    in_range = Sampling(max_tokens=1, seed=42)  # seeds that fit keep their stream
    assert generator_for(in_range, 1).initial_seed() == 42 * 1_000_003 + 1
