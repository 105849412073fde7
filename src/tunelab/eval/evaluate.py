"""Batched predictions for evaluation: label scoring, greedy generation and held-out loss.

Evaluation keeps predictions and per-example scores only, never full logits, so it runs in the
memory of one batch. Label tasks are scored by comparing the log-likelihood of each label as the
assistant's answer, which needs no parsing of free text and gives probabilities for calibration.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tunelab.data.pack import collate_packed, collate_padded, pack
from tunelab.data.templates import Encoded
from tunelab.train.loss import adds_virtual_tokens, loss_sum


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
    for batch in tqdm(list(_batches(pairs, batch_size)), desc=desc, leave=False):
        seqs = [prompt_ids[i] + choice_ids[j] for i, j in batch]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            input_ids[k, :len(s)] = torch.tensor(s)
            attention[k, :len(s)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
        logits = logits[:, -width:]  # prompt tuning returns logits for its virtual tokens first
        for k, (i, j) in enumerate(batch):
            start, n = len(prompt_ids[i]), len(choice_ids[j])
            step_logits = logits[k, start - 1:start - 1 + n].float()
            logprobs = F.log_softmax(step_logits, dim=-1)
            target = torch.tensor(choice_ids[j], device=logprobs.device)
            scores[i][j] = float(logprobs.gather(1, target[:, None]).sum())
    return scores


def choice_probabilities(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 16,
             desc: str = "generating") -> list[str]:
    """Greedy, batched generation with left padding and the KV cache; stops at the EOS token."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for batch in tqdm(list(_batches(order, batch_size)), desc=desc, leave=False):
            enc = tokenizer([prompts[i] for i in batch], add_special_tokens=False, return_tensors="pt",
                            padding=True).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, ids in zip(batch, new):
                outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = previous_side
    return outputs


@torch.no_grad()
def heldout_nll(model, examples: list[Encoded], max_length: int, pad_token_id: int, batch_size: int = 8,
                desc: str = "held-out loss") -> tuple[float, int]:
    """Summed loss and loss-token count over examples, packed like training (unpacked for virtual tokens)."""
    device = next(model.parameters()).device
    if adds_virtual_tokens(model):
        rows, collate = [[e] for e in examples], collate_padded
    else:
        rows, collate = pack(examples, max_length), collate_packed
    total, tokens = 0.0, 0
    for batch in tqdm(list(_batches(rows, batch_size)), desc=desc, leave=False):
        tensors = {k: v.to(device) for k, v in collate(batch, pad_token_id).items()}
        loss, n = loss_sum(model, tensors)
        total += float(loss)
        tokens += n
    return total, tokens
