"""A smaller student cut from a model of the teacher's family: keep N evenly spaced transformer blocks.

Dropping blocks of a pretrained model (first and last kept, the rest evenly spaced, as DistilBERT
built its student from every other BERT layer) gives a student that starts from pretrained weights
and already shares the teacher's vocabulary, so distillation only has to repair the gaps. Decoders
(causal LMs, or a decoder under a classification head) and BERT-style encoders are cut alike.
"""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError

# Where the block list sits under a model's base (``model.base_model``) in the common families:
# Llama/Mistral/Qwen/SmolLM decoders, BERT/MiniLM/RoBERTa encoders, GPT-2, DistilBERT.
BLOCK_PATHS = ("layers", "encoder.layer", "h", "transformer.layer")


def block_owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """(module, attribute) holding the model's ModuleList of transformer blocks."""
    base = model.base_model
    for path in BLOCK_PATHS:
        *parents, attribute = path.split(".")
        owner = base
        for parent in parents:
            owner = getattr(owner, parent, None)
        if isinstance(getattr(owner, attribute, None), torch.nn.ModuleList):
            return owner, attribute
    raise TunelabError(f"distill.student_layers: cannot find the transformer blocks of {name} "
                       f"({type(model).__name__}); looked for {', '.join(BLOCK_PATHS)} under its base model")


def kept_block_indices(total: int, keep: int) -> list[int]:
    """Indices of ``keep`` evenly spaced blocks out of ``total``: the first, the last and those between."""
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def keep_evenly_spaced_blocks(model: torch.nn.Module, keep: int, name: str) -> torch.nn.Module:
    """Cut a model down to ``keep`` of its transformer blocks, in place; its config follows."""
    owner, attribute = block_owner(model, name)
    blocks = getattr(owner, attribute)
    if keep > len(blocks):
        raise TunelabError(f"distill.student_layers={keep}, but {name} has only {len(blocks)} transformer blocks")
    if keep == len(blocks):
        return model
    indices = kept_block_indices(len(blocks), keep)
    setattr(owner, attribute, torch.nn.ModuleList(blocks[i] for i in indices))
    # Attention modules address the KV cache by their block number, which must now count 0..keep-1.
    for number, block in enumerate(getattr(owner, attribute)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = number
    config = model.config
    if getattr(config, "layer_types", None):  # per-block attention kinds (sliding or full) in newer families
        config.layer_types = [config.layer_types[i] for i in indices]
    config.num_hidden_layers = keep
    return model
