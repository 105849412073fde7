"""Scores and generations from an encoder-decoder model: label scoring, greedy generation, held-out loss.

The encoder reads each source once per batch; the decoder scores or writes the target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq

from tunelab.data.pairs import as_feature, target_ids
from tunelab.data.templates import IGNORE_INDEX, Encoded
from tunelab.inference.generate import in_batches
from tunelab.modeling.methods import adds_virtual_tokens


def collator(tokenizer, model) -> DataCollatorForSeq2Seq:
    """Pads sources with the pad token and targets with -100, and shifts targets into decoder inputs."""
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def target_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target tokens (teacher-forced) and the number of target tokens."""
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, int(labels.ne(IGNORE_INDEX).sum())


def _encode_sources(tokenizer, sources: list[str], max_length: int, device) -> dict:
    return tokenizer(sources, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)


@torch.no_grad()
def score_targets(model, tokenizer, sources: list[str], choices: list[str], batch_size: int, max_length: int,
                  desc: str = "scoring") -> list[list[float]]:
    """Log-likelihood of each choice as the whole target, end token included: [source][choice].

    The encoder runs once per batch of sources; the decoder then scores every choice against it.
    Prefix and prompt tuning add their virtual tokens inside peft's forward, so with those the whole
    model runs once per choice.
    """
    device = next(model.parameters()).device
    choice_ids = target_ids(tokenizer, choices, max_length)
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))  # similar lengths pad less
    scores: list[list[float]] = [[] for _ in sources]
    for batch in tqdm(list(in_batches(order, batch_size)), desc=desc, leave=False):
        enc = _encode_sources(tokenizer, [sources[i] for i in batch], max_length, device)
        if adds_virtual_tokens(model):
            source = {"input_ids": enc["input_ids"]}
        else:
            source = {"encoder_outputs": model.get_encoder()(input_ids=enc["input_ids"],
                                                             attention_mask=enc["attention_mask"])}
        for ids in choice_ids:
            labels = torch.tensor([ids] * len(batch), device=device)
            logits = model(**source, attention_mask=enc["attention_mask"], use_cache=False,
                           decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)).logits
            logprobs = F.log_softmax(logits.float(), dim=-1).gather(2, labels[..., None]).squeeze(2).sum(1)
            for i, value in zip(batch, logprobs.tolist()):
                scores[i].append(value)
    return scores


@torch.no_grad()
def generate_targets(model, tokenizer, sources: list[str], max_new_tokens: int, batch_size: int, max_length: int,
                     desc: str = "generating") -> list[str]:
    """Greedy, batched generation from the encoded sources; stops at the end token."""
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    outputs = [""] * len(sources)
    for batch in tqdm(list(in_batches(order, batch_size)), desc=desc, leave=False):
        enc = _encode_sources(tokenizer, [sources[i] for i in batch], max_length, device)
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for i, ids in zip(batch, generated):
            outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return outputs


@torch.no_grad()
def heldout_target_nll(model, tokenizer, examples: list[Encoded], batch_size: int,
                       desc: str = "held-out loss") -> tuple[float, int]:
    """Summed teacher-forced target loss and target-token count over held-out pairs."""
    device = next(model.parameters()).device
    collate = collator(tokenizer, model)
    total, tokens = 0.0, 0
    for batch in tqdm(list(in_batches(examples, batch_size)), desc=desc, leave=False):
        tensors = {k: v.to(device) for k, v in collate([as_feature(e) for e in batch]).items()}
        loss, n = target_loss_sum(model, tensors)
        total += float(loss)
        tokens += n
    return total, tokens
