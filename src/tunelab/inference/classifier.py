"""Predictions of a sequence-classification head: class logits and probabilities, batched.

Texts are tokenized once, unpadded, and batched with texts of similar length.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from tunelab.data.records import Record
from tunelab.modeling.precision import autocast_like

# Feature keys that are training targets, not model inputs.
TARGETS = ("labels", "teacher_logits")


def encode(tokenizer, records: list[Record], label2id: dict[str, int], max_length: int,
           inputs: list[str]) -> list[dict]:
    """One feature dict per record: token ids cut at max_length, unpadded, with the label id."""
    if not records:
        return []
    encoded = tokenizer([r.text for r in records], truncation=True, max_length=max_length)
    keys = [k for k in inputs if k in encoded]
    return [{**{k: encoded[k][i] for k in keys}, "labels": label2id[r.label]} for i, r in enumerate(records)]


@torch.no_grad()
def predict_logits(model, tokenizer, features: list[dict], batch_size: int) -> np.ndarray:
    """Head logits [examples, labels] in fp32, batched over texts of similar length, in eval mode."""
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    logits = np.zeros((len(features), model.config.num_labels), dtype=np.float32)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = collate([{k: features[i][k] for k in features[i] if k not in TARGETS}
                          for i in chunk])
        with autocast_like(model):
            logits[chunk] = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu().numpy()
    return logits


def softmax_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the labels of fp32 logits [examples, labels], as float64."""
    return torch.softmax(torch.from_numpy(logits), dim=-1).double().numpy()


def predict_probabilities(model, tokenizer, features: list[dict], batch_size: int) -> np.ndarray:
    """Softmax probabilities [examples, labels] (float64), batched over texts of similar length."""
    return softmax_probabilities(predict_logits(model, tokenizer, features, batch_size))


def mean_loss(probs: np.ndarray, reference_ids: np.ndarray) -> float:
    """Mean cross-entropy (unweighted) of the reference labels under ``probs``."""
    reference_probs = np.clip(probs[np.arange(len(reference_ids)), reference_ids], 1e-12, 1.0)
    return float(-np.log(reference_probs).mean())


def heldout_loss(model, tokenizer, features: list[dict], batch_size: int) -> float:
    """Mean cross-entropy of ``model`` on ``features``, in eval mode; the mode is restored after."""
    was_training = model.training
    try:
        probs = predict_probabilities(model, tokenizer, features, batch_size)
    finally:
        model.train(was_training)
    return mean_loss(probs, np.array([f["labels"] for f in features]))
