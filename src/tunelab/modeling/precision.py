"""Which dtype the frozen weights use, and autocast to match.

bf16 halves memory traffic and, on CPUs with AVX512-BF16 or AMX and on recent GPUs, runs matmuls
several times faster than fp32. Adapters and optimizer state stay fp32 either way.
"""

from __future__ import annotations

import torch


def pick_dtype(precision: str, method: str) -> torch.dtype:
    """bf16 frozen weights where bf16 matmuls are fast (CUDA, or CPUs with AVX512-BF16/AMX)."""
    if precision == "fp32" or method == "full":
        return torch.float32  # full fine-tuning updates every weight; keep them in fp32
    if precision == "bf16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_like(model) -> torch.autocast:
    """bf16 autocast when the frozen weights are bf16, so fp32 adapters run their matmuls in bf16 too.

    Any bf16 weight turns it on: method freeze mixes fp32 trained modules (which may come first, as
    embeddings do) with bf16 frozen ones, and those only meet inside autocast.
    """
    params = list(model.parameters())
    enabled = any(p.dtype == torch.bfloat16 for p in params)
    return torch.autocast(params[0].device.type, dtype=torch.bfloat16, enabled=enabled)
