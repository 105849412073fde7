"""Turn a loaded base model into the model that trains, according to ``method``.

peft does the adapter work; this file only maps our config onto it and counts parameters.
"""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from tunelab.config import RunConfig

ADAPTER_METHODS = ("lora", "dora", "rslora")


def apply_method(model: torch.nn.Module, config: RunConfig) -> torch.nn.Module:
    if config.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    lora = config.lora
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=config.method == "dora",
        use_rslora=config.method == "rslora",
        task_type="CAUSAL_LM",
    )
    # peft keeps adapter weights in fp32 (autocast_adapter_dtype) while the frozen base may be bf16.
    return get_peft_model(model, peft_config)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
