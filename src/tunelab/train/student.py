"""A smaller student cut from a model of the teacher's family: keep N evenly spaced transformer blocks.

Dropping blocks of a pretrained model (first and last kept, the rest evenly spaced, as DistilBERT
built its student from every other BERT layer) gives a student that starts from pretrained weights
and already shares the teacher's vocabulary, so distillation only has to repair the gaps.
"""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError


def kept_block_indices(total: int, keep: int) -> list[int]:
    """Indices of ``keep`` evenly spaced blocks out of ``total``: the first, the last and those between."""
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def keep_evenly_spaced_blocks(model: torch.nn.Module, keep: int, name: str) -> torch.nn.Module:
    """Cut a causal LM down to ``keep`` of its transformer blocks, in place; its config follows."""
    decoder = model.get_decoder()
    blocks = decoder.layers
    if keep > len(blocks):
        raise TunelabError(f"distill.student_layers={keep}, but {name} has only {len(blocks)} transformer blocks")
    if keep == len(blocks):
        return model
    indices = kept_block_indices(len(blocks), keep)
    decoder.layers = torch.nn.ModuleList(blocks[i] for i in indices)
    # Attention modules address the KV cache by their block number, which must now count 0..keep-1.
    for number, block in enumerate(decoder.layers):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = number
    config = model.config
    if getattr(config, "layer_types", None):  # per-block attention kinds (sliding or full) in newer families
        config.layer_types = [config.layer_types[i] for i in indices]
    config.num_hidden_layers = keep
    return model
