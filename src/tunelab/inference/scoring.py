"""Scores from a causal LM without generating: label log-likelihoods and held-out loss.

Evaluation keeps predictions and per-example scores only, never full logits, so it runs in the
memory of one batch. Label tasks are scored by comparing the log-likelihood of each label as the
assistant's answer, which needs no parsing of free text and gives probabilities for calibration.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tunelab.data.pack import collate_packed, collate_padded, pack, to_device, width_multiple
from tunelab.data.templates import Encoded
from tunelab.inference.generate import contiguous_head_input, in_batches
from tunelab.modeling.fast.segment_attention import uses_segment_attention
from tunelab.modeling.loss import loss_sum
from tunelab.modeling.methods import adds_virtual_tokens


@torch.no_grad()
def score_choices(model, tokenizer, prompts: list[str], choices: list[str], batch_size: int = 16,
                  desc: str = "scoring") -> list[list[float]]:
    """Log-probability of each choice's tokens following each prompt: [prompt][choice]."""
    choice_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(choices))]
    # Longest first keeps padding low and surfaces out-of-memory at the first batch.
    pairs.sort(key=lambda ij: -(len(prompt_ids[ij[0]]) + len(choice_ids[ij[1]])))
    scores = [[0.0] * len(choices) for _ in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with contiguous_head_input(model):  # else the head sees a strided slice and projects every position
        for batch in tqdm(list(in_batches(pairs, batch_size)), desc=desc, leave=False):
            _score_batch(model, batch, prompt_ids, choice_ids, pad, device, scores)
    return scores


def _score_batch(model, batch: list[tuple[int, int]], prompt_ids: list[list[int]], choice_ids: list[list[int]],
                 pad: int, device, scores: list[list[float]]) -> None:
    """Fill ``scores[i][j]`` for each (prompt i, choice j) pair of the batch."""
    seqs = [prompt_ids[i] + choice_ids[j] for i, j in batch]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, s in enumerate(seqs):
        input_ids[k, :len(s)] = torch.tensor(s)
        attention[k, :len(s)] = 1
    # Logits only from the first position that predicts a choice token on: the vocabulary
    # projection of every prompt position would dominate memory (49k columns for SmolLM2).
    first = min(len(prompt_ids[i]) for i, _ in batch) - 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False,
                   logits_to_keep=width - first).logits
    logits = logits[:, -(width - first):]  # prompt tuning may return logits for its virtual tokens too
    for k, (i, j) in enumerate(batch):
        start, n = len(prompt_ids[i]) - first, len(choice_ids[j])
        step_logits = logits[k, start - 1:start - 1 + n].float()
        logprobs = F.log_softmax(step_logits, dim=-1)
        target = torch.tensor(choice_ids[j], device=logprobs.device)
        scores[i][j] = float(logprobs.gather(1, target[:, None]).sum())


def choice_probabilities(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


@torch.no_grad()
def heldout_nll(model, examples: list[Encoded], max_length: int, pad_token_id: int, batch_size: int = 8,
                desc: str = "held-out loss") -> tuple[float, int]:
    """Summed loss and loss-token count over examples, packed like training (unpacked for virtual tokens)."""
    device = next(model.parameters()).device
    if adds_virtual_tokens(model):
        rows, collate = [[e] for e in examples], collate_padded
    else:
        rows = pack(examples, max_length)
        segments = uses_segment_attention(model)
        collate = partial(collate_packed, pad_to_multiple_of=width_multiple(device.type, segments), segments=segments)
    total, tokens = 0.0, 0
    for batch in tqdm(list(in_batches(rows, batch_size)), desc=desc, leave=False):
        tensors = to_device(collate(batch, pad_token_id), device)
        loss, n = loss_sum(model, tensors)
        total += float(loss)
        tokens += n
    return total, tokens
