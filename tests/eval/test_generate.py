"""Batched generation gives what one prompt at a time gives, with a contiguous input to the head."""

import torch

from tunelab.inference.generate import (
    MIN_SHARED_PREFIX,
    _prefix_padding_suffix,
    _shared_prefix,
    contiguous_head_input,
    generate,
)


def test_batched_generation_equals_one_at_a_time(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # the random model would answer only newlines, which decode to ""
        model.get_output_embeddings().weight[tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]] = 0
    prompts = [tiny_tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)
               for text in ("great", "the movie was dull and tedious", "a wonderful, moving film", "awful")]
    batched = generate(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(model, tiny_tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single and all(batched)


def test_a_shared_prefix_is_prefilled_once_with_the_same_outputs(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight[tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]] = 0
    instruction = "Classify the following text as one of: negative, positive. Answer with the label only. Text: "
    prompts = [tiny_tokenizer.apply_chat_template([{"role": "user", "content": instruction + text}], tokenize=False,
                                                  add_generation_prompt=True)
               for text in ("great", "the movie was dull and tedious", "a wonderful, moving film", "awful")]
    ids = tiny_tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert _shared_prefix(ids) >= MIN_SHARED_PREFIX  # the shared path runs
    calls = []
    forward = model.forward
    model.forward = lambda *args, **kwargs: calls.append(kwargs["input_ids"].shape) or forward(*args, **kwargs)
    batched = generate(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert calls[0] == (1, _shared_prefix(ids))  # the prefix alone, once
    assert calls[1][1] == max(map(len, ids)) - _shared_prefix(ids)  # then only the prompts' own tokens
    model.forward = forward
    single = [generate(model, tiny_tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single and all(batched)


def test_prefix_padding_suffix_layout():
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 7, 8, 6]]
    assert _shared_prefix(ids) == 0  # three tokens in common: not worth a prefill of their own
    input_ids, attention = _prefix_padding_suffix(ids, 3, pad=0)
    assert input_ids.tolist() == [[1, 2, 3, 0, 4, 5], [1, 2, 3, 0, 0, 9], [1, 2, 3, 7, 8, 6]]
    assert attention.tolist() == [[1, 1, 1, 0, 1, 1], [1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    long = [[5] * 20 + [1], [5] * 20 + [2, 3], [5] * 20]
    assert _shared_prefix(long) == 19  # each prompt keeps at least one token of its own
    assert _shared_prefix([[5] * 30]) == 0  # a single prompt


def test_head_sees_a_contiguous_input_inside_the_context(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    head = model.get_output_embeddings()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    seen = []
    with torch.no_grad():
        with contiguous_head_input(model):
            recorder = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
            inside = model(input_ids=ids, logits_to_keep=1).logits
        model(input_ids=ids, logits_to_keep=1)  # outside: the model hands the head a strided slice
        recorder.remove()
        reference = model(input_ids=ids).logits[:, -1:]
    assert seen == [True, False]
    assert torch.allclose(inside, reference, atol=1e-5)


def test_choice_scores_in_batches_equal_full_logit_scores(tiny_model_dir, tiny_tokenizer):
    """Scoring keeps logits only from the first choice position on; prompts of different lengths share a batch."""
    from transformers import AutoModelForCausalLM

    from tunelab.inference.scoring import score_choices

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = ["great", "the movie was dull and tedious from start to end", "a wonderful, moving film", "awful"]
    choices = ["negative", "positive", "mixed feelings"]
    batched = score_choices(model, tiny_tokenizer, prompts, choices, batch_size=5)

    def full_logits_score(prompt: str, choice: str) -> float:
        prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        choice_ids = tiny_tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + choice_ids])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
        return float(logprobs.gather(1, torch.tensor(choice_ids)[:, None]).sum())

    reference = [[full_logits_score(p, c) for c in choices] for p in prompts]
    assert torch.allclose(torch.tensor(batched), torch.tensor(reference), atol=1e-4)


def test_generation_batches_hold_at_most_the_token_budget():
    from tunelab.inference.generate import token_capped_batches

    widths = [600, 500, 300, 300, 300, 100, 100, 100, 100, 100, 90]
    batches = token_capped_batches(list(range(len(widths))), widths, size=4, max_tokens=1000)
    assert [i for batch in batches for i in batch] == list(range(len(widths)))  # all, in order
    assert batches[0] == [0]  # 2 x 600 > 1000
    assert batches[1] == [1, 2]  # widest first: 2 x 500
    assert all(len(batch) <= 4 and len(batch) * widths[batch[0]] <= 1000 for batch in batches[1:])
    assert token_capped_batches([0], [5000], size=4, max_tokens=1000) == [[0]]  # one long prompt still runs


def test_choice_scoring_projects_only_the_choice_positions(tiny_model_dir, tiny_tokenizer):
    """The head runs on the positions that predict choice tokens, not on every prompt position, and gets them
    contiguous (on a strided slice the CPU bf16 matmul projects every position)."""
    from transformers import AutoModelForCausalLM

    from tunelab.inference.scoring import score_choices

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    projected = []
    hook = model.get_output_embeddings().register_forward_hook(  # sees the input after pre-hooks
        lambda m, args, out: projected.append((args[0].shape[1], args[0].is_contiguous())))
    prompt = "the movie was dull and tedious from start to end, and then it went on"
    score_choices(model, tiny_tokenizer, [prompt], ["negative", "positive"], batch_size=2)
    hook.remove()
    prompt_length = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    longest_choice = max(len(tiny_tokenizer(c, add_special_tokens=False)["input_ids"]) for c in ("negative", "positive"))
    assert projected == [(longest_choice + 1, True)]
    assert projected[0][0] < prompt_length
