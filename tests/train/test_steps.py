"""Steps hold batch_size examples whatever the packing; micro-batches stay within the memory plan."""

import random

import pytest

from tunelab.data.templates import IGNORE_INDEX, Encoded
from tunelab.train.steps import StepSampler, epoch_order, pack_rows, plan_steps, tokens_by_global_step


def examples(lengths):
    return [Encoded(list(range(n)), [IGNORE_INDEX] * (n - 1) + [1]) for n in lengths]


def lengths_of(micro_batch):
    return sorted(len(e.input_ids) for row in micro_batch for e in row)


@pytest.mark.parametrize("packing", [True, False])
def test_every_step_holds_its_examples_and_respects_the_budget(packing):
    rng = random.Random(0)
    data = examples([rng.randint(20, 400) for _ in range(37)])
    plan = plan_steps(data, examples_per_step=8, max_length=512, micro_batch_tokens=1024, packing=packing)
    assert plan.steps == 5  # 37 examples at 8 per step
    assert len(plan.micro_batches) == plan.steps * plan.per_step
    for s in range(plan.steps):
        step = plan.micro_batches[s * plan.per_step:(s + 1) * plan.per_step]
        got = sorted(n for mb in step for n in lengths_of(mb))
        assert got == sorted(len(e.input_ids) for e in data[s * 8:(s + 1) * 8])
        assert sum(got) == plan.step_tokens[s]
        for micro_batch in step:
            if micro_batch:
                width = max(sum(len(e.input_ids) for e in row) for row in micro_batch)
                assert len(micro_batch) * width <= 1024 and width <= 512
                assert packing or all(len(row) == 1 for row in micro_batch)


def test_micro_batches_are_balanced_by_tokens():
    data = examples([400, 390, 380, 30, 20, 10, 300, 310])
    plan = plan_steps(data, examples_per_step=8, max_length=512, micro_batch_tokens=1024, packing=True)
    loads = [sum(lengths_of(mb)) for mb in plan.micro_batches]
    # 1840 tokens would fit two budgets of 1024, but rows padded to their widest need a third.
    assert plan.per_step == 3 and max(loads) - min(loads) <= 400


def test_a_short_last_step_gets_empty_micro_batches():
    data = examples([300] * 8 + [50])
    plan = plan_steps(data, examples_per_step=8, max_length=512, micro_batch_tokens=1024, packing=True)
    last = plan.micro_batches[plan.per_step:]
    assert plan.per_step == 3 and sum(1 for mb in last if not mb) == 2


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows(examples([300, 200, 250, 240, 10]), 512)
    assert [sorted(len(e.input_ids) for e in row) for row in rows] == [[10, 200, 300], [240, 250]]


def test_sampler_keeps_steps_whole_and_shuffles_per_epoch():
    plan = plan_steps(examples([100] * 40), examples_per_step=4, max_length=128, micro_batch_tokens=256,
                      packing=True)
    sampler = StepSampler(plan, seed=3, shuffle=True)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(len(plan.micro_batches))) and first != second
    for order in (first, second):
        for k in range(0, len(order), plan.per_step):
            chunk = order[k:k + plan.per_step]
            assert chunk == list(range(chunk[0], chunk[0] + plan.per_step)) and chunk[0] % plan.per_step == 0
    assert list(StepSampler(plan, seed=3, shuffle=False)) == list(range(len(plan.micro_batches)))
    tokens = tokens_by_global_step(plan, 2, seed=3, shuffle=True)
    assert len(tokens) == 2 * plan.steps and epoch_order(plan.steps, 1, 3, True) == [
        first_index // plan.per_step for first_index in second[::plan.per_step]]


@pytest.mark.parametrize("curriculum", ["length", "base_loss"])
def test_curriculum_runs_easy_steps_first_and_keeps_the_order_on_resume(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                       curriculum):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data.templates import encode_chat
    from tunelab.train.curriculum import curriculum_order, example_losses

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    texts = ["great", "the movie was dull and tedious and far too long", "a wonderful, moving film", "awful"]
    data = [encode_chat(tiny_tokenizer, [{"role": "user", "content": t}, {"role": "assistant", "content": t}], 64)
            for t in texts]
    saved = tmp_path / "curriculum.json"
    ordered = curriculum_order(model, data, curriculum, tiny_tokenizer.pad_token_id, saved)
    if curriculum == "length":
        scores = [len(e.input_ids) for e in ordered]
    else:
        scores = example_losses(model, ordered, tiny_tokenizer.pad_token_id)
    assert scores == sorted(scores) and sorted(map(id, ordered)) == sorted(map(id, data))
    # Resuming reads the saved order even if the model now scores examples differently.
    stored = json.loads(saved.read_text())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    again = curriculum_order(model, data, curriculum, tiny_tokenizer.pad_token_id, saved)
    assert [data.index(e) for e in again] == stored["order"]
