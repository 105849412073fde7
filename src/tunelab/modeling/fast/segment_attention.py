"""Attention for packed rows: causal attention within each example, as batched matmuls.

A packed row holds several examples one after another. The block-causal mask in ``collate_packed``
keeps them apart, but SDPA with a dense mask computes every block of the row's [T x T] scores and,
on CPU, runs a slow masked backward. Here the row is split at example boundaries and each example
attends causally within itself (``SegmentAttention``): only the blocks that matter are computed, and
a micro-batch can be a single row of any length (no padding between rows).

The attention is registered with transformers under ``NAME``. It is used when a batch carries
``packed_segments`` (the example lengths of each row); anything else (evaluation, generation with a
KV cache) runs transformers' own SDPA attention unchanged.

The default on CPU for Llama-family models (``train.packed_attention``). Measured on the throughput
benchmark's tunelab run (SmolLM2-135M, LoRA, 2 cores of an AMD EPYC with AVX512-BF16): 446-466
tokens/s against 297 with the block mask; an example-by-example loop of SDPA's flash kernel reached
343-346. On the quickstart's data with compiled decoder layers, 461 against 385 tokens/s with the mask
(this function is eager: compiled layers call it between two graphs).
"""

from __future__ import annotations

import functools
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
    lengths = [[n for n in row if n] for row in packed_segments.tolist()]
    if dropout and module.training:
        return _sdpa_per_example(query, key, value, lengths, dropout, scaling), None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return SegmentAttention.apply(query, key, value, lengths, scale), None


def _sdpa_per_example(query, key, value, lengths: list[list[int]], dropout: float, scaling: float | None):
    """One causal SDPA call per example, for attention dropout (which ``SegmentAttention`` does not apply)."""
    rows = []
    for b, row in enumerate(lengths):
        pieces, start = [], 0
        for n in row:
            span = slice(start, start + n)
            pieces.append(F.scaled_dot_product_attention(
                query[b:b + 1, :, span], key[b:b + 1, :, span], value[b:b + 1, :, span], is_causal=True,
                dropout_p=dropout, scale=scaling, enable_gqa=True))
            start += n
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous()


# Probabilities kept for the backward pass cost n values per query for an n-token example. Up to
# this many times the head dimension (the attention output per query) they are kept; a longer
# example recomputes them in its backward pass, block by block.
KEEP_PROBABILITIES_UP_TO = 8
BLOCK_SCORES = 1 << 18  # scores per stacked head in one block of queries (512 x 512)
# Queries per block at most. Blocks above the diagonal are neither computed nor kept, so smaller
# blocks keep less (for a 448-position example, 256 keeps a quarter less than one block) but run
# smaller matmuls: one training step of the throughput benchmark took 2.42-2.77 s with blocks of
# 512, 2.56-2.72 s with 256 and 2.75-2.84 s with 128.
QUERY_BLOCK = 256
# Each example is padded to whole spans of this many positions inside the attention, so that its
# buffers come in few sizes, which glibc's heap reuses. With exact sizes the throughput benchmark's
# peak resident memory was 3105-3130 MB against 2762-2817 MB.
PAD_MULTIPLE = 64


class SegmentAttention(torch.autograd.Function):
    """Causal attention within each example of packed rows, as a few batched matmuls per example.

    The query heads that share a key/value head are stacked, so one ``bmm`` per product serves a
    whole group, with no copies of the key/value heads. Scores are rounded to the inputs' dtype as
    in transformers' eager attention; the softmax computes in fp32 and rounds its output once.
    Queries go in blocks of at most ``QUERY_BLOCK`` positions (fewer for very long examples:
    ``BLOCK_SCORES // n``), and each block multiplies only the keys up to its last query, so a long
    example never holds its full [n x n] scores. Short examples keep their probabilities for the
    backward pass (``KEEP_PROBABILITIES_UP_TO``); long ones recompute them.

    On CPU these matmuls run near the machine's matmul peak, where SDPA's flash kernel reaches a
    fraction of it: forward and backward of eight examples of 98-339 tokens with SmolLM2's heads,
    bf16, on 2 cores of an AVX512-BF16 CPU, took 32 ms against 51 ms per layer.
    """

    @staticmethod
    def forward(ctx, query, key, value, lengths: list[list[int]], scale: float):
        out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
        kept = []
        for b, start, n in _examples(lengths):
            q, k, v = (_padded(x[b], start, n) for x in (query, key, value))
            keep = _keeps_probabilities(n, q.shape[-1])
            o = torch.empty_like(q)
            for first, end in _query_blocks(q.shape[1]):
                p = _probabilities(_stacked(q, k.shape[0], first, end), k[:, :end], first, scale)
                o[:, first:end] = torch.bmm(p, v[:, :end]).view(o.shape[0], end - first, o.shape[2])
                if keep:
                    kept.append(p)
            out[b, start:start + n] = o[:, :n].transpose(0, 1)
        ctx.save_for_backward(query, key, value, *kept)
        ctx.lengths, ctx.scale = lengths, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, *kept = ctx.saved_tensors
        kept = iter(kept)
        grad_q, grad_k, grad_v = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        for b, start, n in _examples(ctx.lengths):
            q, k, v = (_padded(x[b], start, n) for x in (query, key, value))
            do = _padded(grad_out[b].transpose(0, 1), start, n)
            keep = _keeps_probabilities(n, q.shape[-1])
            dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            kv_heads = k.shape[0]
            for first, end in _query_blocks(q.shape[1]):
                qb, dob = _stacked(q, kv_heads, first, end), _stacked(do, kv_heads, first, end)
                p = next(kept) if keep else _probabilities(qb, k[:, :end], first, ctx.scale)
                dv[:, :end].baddbmm_(p.transpose(1, 2), dob)
                grad_scores = torch._softmax_backward_data(torch.bmm(dob, v[:, :end].transpose(1, 2)), p, -1, p.dtype)
                dq[:, first:end] = torch.bmm(grad_scores, k[:, :end]).mul_(ctx.scale).view(dq.shape[0], end - first, -1)
                dk[:, :end].baddbmm_(grad_scores.transpose(1, 2), qb, alpha=ctx.scale)
            for grad, g in ((grad_q, dq), (grad_k, dk), (grad_v, dv)):
                grad[b, :, start:start + n] = g[:, :n]
        return grad_q, grad_k, grad_v, None, None


def _keeps_probabilities(n: int, dim: int) -> bool:
    """Whether an n-token example keeps its probabilities for the backward pass (``KEEP_PROBABILITIES_UP_TO``)."""
    return n <= KEEP_PROBABILITIES_UP_TO * dim


def _examples(lengths: list[list[int]]):
    """(row, first position, length) of every example of every row."""
    for b, row in enumerate(lengths):
        start = 0
        for n in row:
            yield b, start, n
            start += n


def _padded(x: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """Positions [start, start + n) of a [heads, T, dim] tensor, zero-padded to a multiple of
    ``PAD_MULTIPLE`` positions. Padded queries see every real key, and their outputs are dropped;
    padded keys come after every real query, which the causal mask hides them from."""
    padded = x.new_zeros(x.shape[0], -(-n // PAD_MULTIPLE) * PAD_MULTIPLE, x.shape[2])
    padded[:, :n] = x[:, start:start + n]
    return padded


def _query_blocks(n: int):
    """[first, end) query positions of each block of an n-position (padded) example."""
    size = max(PAD_MULTIPLE, min(QUERY_BLOCK, BLOCK_SCORES // n) // PAD_MULTIPLE * PAD_MULTIPLE)
    return [(first, min(first + size, n)) for first in range(0, n, size)]


def _stacked(x: torch.Tensor, kv_heads: int, first: int, end: int) -> torch.Tensor:
    """Positions [first, end) of [heads, n, dim], the heads of a key/value head stacked: [kv_heads, g * rows, dim]."""
    heads, n, dim = x.shape
    if (first, end) == (0, n):
        return x.view(kv_heads, heads // kv_heads * n, dim)
    return x.view(kv_heads, heads // kv_heads, n, dim)[:, :, first:end].reshape(kv_heads, -1, dim)


def _probabilities(q: torch.Tensor, k: torch.Tensor, first: int, scale: float) -> torch.Tensor:
    """Softmax of the causally masked scores of a block whose queries are positions [first, len(k))."""
    queries, keys = k.shape[1] - first, k.shape[1]
    bias = _causal_bias(queries, keys, q.shape[1] // queries, q.dtype, q.device)
    return torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), dim=-1)


@functools.lru_cache(maxsize=128)
def _causal_bias(queries: int, keys: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[groups * queries, keys]: the last ``queries`` of ``keys`` positions, stacked once per head of a
    group; 0 where a query may see a key, -inf after it."""
    bias = torch.full((queries, keys), float("-inf"), dtype=dtype, device=device).triu_(keys - queries + 1)
    return bias.repeat(groups, 1)


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
