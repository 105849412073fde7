"""Curriculum ordering: easy examples first, by length or by the base model's loss.

``length`` sorts by token count. ``base_loss`` scores every training example once with the model
before training (mean loss per answer token; one forward pass over the training set) and sorts by
it. Steps then run in that order every epoch instead of being shuffled, and examples of similar
difficulty share a step.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tunelab.data.pack import collate_packed, collate_padded, to_device
from tunelab.data.templates import Encoded
from tunelab.io import atomic_write_json
from tunelab.modeling.fast.segment_attention import uses_segment_attention
from tunelab.modeling.loss import loss_sum
from tunelab.modeling.methods import adds_virtual_tokens
from tunelab.modeling.precision import autocast_like


@torch.no_grad()
def example_losses(model, examples: list[Encoded], pad_token_id: int) -> list[float]:
    """Mean loss per loss token of each example under ``model``, each example run alone."""
    was_training = model.training
    model.eval()
    collate = collate_padded if adds_virtual_tokens(model) else partial(
        collate_packed, segments=uses_segment_attention(model))
    device = next(model.parameters()).device
    losses = []
    with autocast_like(model):
        for example in tqdm(examples, desc="curriculum: base-model loss", leave=False):
            batch = to_device(collate([[example]], pad_token_id), device)
            total, count = loss_sum(model, batch)
            losses.append(float(total) / max(count, 1))
    model.train(was_training)
    return losses


def curriculum_order(model, examples: list[Encoded], curriculum: str, pad_token_id: int,
                     saved: Path) -> list[Encoded]:
    """``examples`` from easiest to hardest (a stable sort, so ties keep their shuffled order).

    The order is saved to ``saved`` and read back from it when a run resumes, because the model
    being trained no longer scores examples the way the base model did.
    """
    if curriculum == "none":
        return list(examples)
    if saved.exists():
        stored = json.loads(saved.read_text(encoding="utf-8"))
        if stored["curriculum"] == curriculum and len(stored["order"]) == len(examples):
            return [examples[i] for i in stored["order"]]
    if curriculum == "length":
        scores = [float(len(e.input_ids)) for e in examples]
    else:
        scores = example_losses(model, examples, pad_token_id)
    order = sorted(range(len(examples)), key=scores.__getitem__)
    atomic_write_json(saved, {"curriculum": curriculum, "order": order,
                              "scores": [round(scores[i], 4) for i in order]})
    return [examples[i] for i in order]
