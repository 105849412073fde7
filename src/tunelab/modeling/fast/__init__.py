"""Every speed-up tunelab applies to a model, behind two calls.

Each speed-up is proven equal to the plain path by its own tests, and decides for itself whether it
is valid for the model at hand (family, device, dtype, whether a task packs examples):

- segment attention (``segment_attention.py``): packed examples attend within themselves, as batched
  matmuls; CPU, Llama-family decoders, tasks that pack examples, ``train.packed_attention: segments``;
- grouped key/value heads read as they are by SDPA on CPU (``segment_attention.py``);
- lean activations (``lean_activations.py``): RMSNorm and SwiGLU keep only what the backward needs;
- the single-rounding LoRA forward (``lora_forward.py``) and bf16 adapter inputs kept as they are;
- large blocks mapped on their own (``memory.py``), for training without segment attention;
- compiled decoder layers (``compile.py``) are a context around the training loop, opened by
  ``tunelab/train/fit.py``, so evaluation runs eager layers.

Both calls may be made more than once: each applies what fits the model as it stands, and applying
one twice changes nothing. Recipes call ``prepare_for_training`` on the loaded base and again once
the method has added its adapters (peft's layers exist only then).
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from tunelab.config import TASKS, RunConfig
from tunelab.modeling.fast.lean_activations import use_lean_activations
from tunelab.modeling.fast.lora_forward import use_single_rounding
from tunelab.modeling.fast.memory import return_large_blocks_at_once
from tunelab.modeling.fast.segment_attention import (
    grouped_query_attention_on_cpu,
    use_segment_attention,
    uses_segment_attention,
    wants_segment_attention,
)
from tunelab.modeling.methods import unwrap


def prepare_for_training(model: torch.nn.Module, config: RunConfig) -> None:
    """Apply every training speed-up valid for ``model`` under ``config``."""
    _prepare_layers(model, config)
    if any(p.dtype == torch.bfloat16 for p in model.parameters()):
        keep_adapter_inputs_bf16(model)
    if not uses_segment_attention(model):
        return_large_blocks_at_once()  # activations go back to the system when freed


def prepare_for_inference(model: torch.nn.Module, config: RunConfig | None = None) -> torch.nn.Module:
    """Apply every inference speed-up valid for ``model`` and return it; with a run's ``config``, held-out
    loss is taken on packed rows exactly as that run's training evaluated it."""
    _prepare_layers(model, config)
    return model


def _prepare_layers(model: torch.nn.Module, config: RunConfig | None) -> None:
    if config is not None and TASKS[config.task].packs and wants_segment_attention(config):
        use_segment_attention(unwrap(model))
    grouped_query_attention_on_cpu(unwrap(model))
    use_lean_activations(model)
    use_single_rounding(model)


def keep_adapter_inputs_bf16(model: torch.nn.Module) -> None:
    """Stop peft from casting each adapter's input to the adapter's fp32 dtype.

    With a bf16 base, every step runs under bf16 autocast, which casts that fp32 copy straight back
    to bf16 for the adapter's matmul: two full copies of the activations per adapted layer for the
    same result. Measured on SmolLM2 with LoRA on CPU: dtype copies were about a fifth of the step.
    """
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
