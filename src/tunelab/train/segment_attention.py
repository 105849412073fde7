"""Attention for packed rows: one causal SDPA call per example instead of a block mask over the row.

A packed row holds several examples one after another. The block-causal mask in ``collate_packed``
keeps them apart, but SDPA with a dense mask computes every block of the row's [T x T] scores and,
on CPU, runs a slow masked backward. Splitting the row at example boundaries and calling SDPA with
``is_causal`` on each example computes only the blocks that matter, and lets a micro-batch be a
single row of any length (no padding between rows).

The attention is registered with transformers under ``NAME``. It is used when a batch carries
``packed_segments`` (the example lengths of each row); anything else (evaluation, generation with a
KV cache) runs transformers' own SDPA attention unchanged.

Opt-in (``train.packed_attention: segments``). Measured on the throughput benchmark's tunelab run
(SmolLM2-135M, LoRA, 2 cores): on an AMD EPYC with AVX512-BF16, where attention is about a third of
an eager step, 343-346 against 292 tokens/s at the same peak memory (each example takes whole spans
of 64 positions, see ``SEGMENT_MULTIPLE`` in data/pack.py); on a Xeon with AMX, whose matmuls are
several times faster, 443 against 458 tokens/s. With compiled decoder layers it is slower (269
against 370 tokens/s on the quickstart's short sentences): this function is a graph break in every
layer.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "tunelab_segments"


@torch.compiler.disable  # a Python loop over examples: compiled layers call it eagerly
def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      packed_segments: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """[B, heads, T, dim] inputs to the [B, T, heads, dim] output transformers expects.

    ``packed_segments`` is a [B, S] tensor of example lengths per row, zero-padded (a tensor, not a
    tuple, so that compiled layers see one input of varying shape rather than new constants).
    """
    if packed_segments is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows = []
    for b, lengths in enumerate(packed_segments.tolist()):
        pieces, start = [], 0
        for n in filter(None, lengths):
            span = slice(start, start + n)
            pieces.append(F.scaled_dot_product_attention(
                query[b:b + 1, :, span], key[b:b + 1, :, span], value[b:b + 1, :, span], is_causal=True,
                dropout_p=dropout, scale=scaling, enable_gqa=True))
            start += n
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, segment_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # masks for the non-packed calls, as with sdpa


# Decoders whose attention passes the model's keyword arguments through to the attention function
# and applies rotary positions from ``position_ids`` before it.
SEGMENT_ATTENTION_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "granite"})


def supports_segment_attention(config) -> bool:
    """A known decoder with plain causal self-attention in every layer: no soft-capping, no sliding window."""
    if config.model_type not in SEGMENT_ATTENTION_MODELS or getattr(config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return not getattr(config, "sliding_window", None)


def wants_segment_attention(config) -> bool:
    """Whether a run's config asks for segment attention (``train.packed_attention``)."""
    return config.train.packing and config.train.packed_attention == "segments"


def use_segment_attention(model) -> bool:
    """Switch a loaded causal LM to segment attention where it is known to work; True if switched.

    CPU only, where it was measured (``train.packed_attention``). On GPUs the masked SDPA kernels are
    fast and one kernel launch per example is not, so CUDA keeps the block mask.
    """
    if torch.cuda.is_available() or model.device.type != "cpu":
        return False
    if not supports_segment_attention(model.config) or model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True


def grouped_query_attention_on_cpu(model) -> None:
    """Let SDPA read grouped key/value heads as they are, on CPU, instead of transformers' copies.

    With an attention mask, transformers repeats each key/value head for its query heads before
    SDPA (its CUDA kernels need that); CPU flash attention takes the mask together with grouped
    heads. Same output; on SmolLM2 (9 query, 3 key/value heads, two 512-token rows, bf16) the
    forward and backward took 14.1 ms instead of 16.9 ms. transformers reads the switch from the
    environment at every call, so it is set for this process, and only where the model is on CPU.
    """
    if model.device.type == "cpu":
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")


def uses_segment_attention(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "_attn_implementation", None) == NAME
