"""Causal-LM loss computed only where it is taken.

The usual path builds logits for every position, a [tokens x vocab] tensor (49k columns for
SmolLM2) that dominates memory and a good share of compute when only the answer tokens carry
loss. Here the decoder's hidden states are gathered at loss positions first, and the vocabulary
projection and cross-entropy run on those rows in chunks. The result is the summed loss; the
caller divides by the number of loss tokens in the whole (accumulated) batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.data.templates import IGNORE_INDEX
from tunelab.modeling.fast.segment_attention import uses_segment_attention
from tunelab.modeling.methods import adds_virtual_tokens, unwrap

CHUNK_ROWS = 1024


def supports_selective_logits(model) -> bool:
    """Plain decoder + linear head models only; soft-capped or scaled logits use the usual path."""
    base = unwrap(model)
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    if adds_virtual_tokens(model):
        return False  # these rewrite the inputs inside PeftModel.forward
    return base.get_output_embeddings() is not None and hasattr(base, "get_decoder")


def attention_mask_for(model, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The packed boolean [B,1,T,T] mask as the model's attention implementation needs it.

    SDPA takes a boolean mask as is; the eager implementation adds the mask to the scores, so it
    needs 0 / -inf values (a boolean mask there silently lets examples see each other).
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 4 or mask.dtype != torch.bool:
        return mask
    if unwrap(model).config._attn_implementation != "eager":
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def decoder_inputs(model, batch: dict) -> dict:
    """Keyword arguments for the model's forward pass: ids, positions, and the mask or segment lengths."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": attention_mask_for(model, batch),
              "position_ids": batch.get("position_ids"), "use_cache": False}
    if batch.get("packed_segments") is not None:
        if not uses_segment_attention(model):
            raise ValueError("a batch collated for segment attention reached a model without it; "
                             "collate with segments=False for this model")
        inputs["packed_segments"] = batch["packed_segments"]
    return inputs


def selective_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over loss positions, never materialising full logits."""
    base = unwrap(model)
    hidden = base.get_decoder()(**decoder_inputs(model, batch)).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    rows = hidden[:, :-1][keep]
    targets = targets[keep]
    head = base.get_output_embeddings()
    total = hidden[:, :0].float().sum()  # zero that stays in the graph when a batch has no loss tokens
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        logits = head(rows[start:start + CHUNK_ROWS]).float()
        total = total + F.cross_entropy(logits, targets[start:start + CHUNK_ROWS], reduction="sum")
    return total, int(targets.numel())


def reference_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The plain path: full logits from the model's own forward. Used for checks and fallbacks."""
    width = batch["input_ids"].shape[1]
    logits = model(**decoder_inputs(model, batch)).logits
    logits = logits[:, -width:].float()  # prompt tuning returns logits for its virtual tokens first
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    if supports_selective_logits(model):
        return selective_loss_sum(model, batch)
    return reference_loss_sum(model, batch)
