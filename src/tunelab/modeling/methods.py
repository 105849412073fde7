"""Turn a loaded base model into the model that trains, according to ``method``.

peft and bitsandbytes do the work; this file only maps our config onto them, loads saved adapters
and counts parameters. Speed-ups to peft's layers are applied elsewhere, by
``prepare_for_training`` and ``prepare_for_inference`` (tunelab/modeling/fast/).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from peft import (
    IA3Config,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from peft import LoraConfig as PeftLoraConfig
from transformers import BitsAndBytesConfig

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.modeling.precision import pick_dtype
from tunelab.modeling.sealed_weights import attach_adapter

LORA_METHODS = ("lora", "dora", "rslora", "qlora")
WHOLE_MODEL_METHODS = ("full", "freeze")  # saved as a model folder, not an adapter
# peft prepends the virtual tokens of these inside PeftModel.forward by joining a [batch, virtual]
# block of ones to a 2D attention mask; it cannot extend a packed [B,1,T,T] block-causal mask, so
# these methods train one example per row with a 2D padding mask.
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt")


def quantization_config(config: RunConfig) -> BitsAndBytesConfig | None:
    """How load_causal_lm and load_seq2seq quantize the base: 4-bit NF4 for qlora, nothing for every other method."""
    if config.method != "qlora":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TunelabError('method: qlora needs bitsandbytes: pip install "tunelab[qlora]"') from None
    qlora = config.qlora
    precision = config.train.precision if qlora.compute_dtype == "auto" else qlora.compute_dtype
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=pick_dtype(precision, config.method),
                              bnb_4bit_use_double_quant=qlora.double_quant)


def apply_method(model: torch.nn.Module, config: RunConfig, task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    if config.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if config.method == "freeze":
        return freeze_all_but(model, config)
    if config.method == "qlora":
        # peft's QLoRA preparation: norms and embeddings to fp32. Gradient checkpointing stays off, as
        # for every other method. Train before any eval-mode forward: on AVX512-BF16 CPUs bitsandbytes
        # then repacks the 4-bit weights for inference, and no gradient passes through them after that.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # peft keeps adapter weights in fp32 (autocast_adapter_dtype) while the frozen base may be bf16.
    return get_peft_model(model, peft_config(config, model.name_or_path, task_type))


def load_adapter(base: torch.nn.Module, folder) -> torch.nn.Module:
    """A saved adapter on its base (peft's forward; ``prepare_for_inference`` adds tunelab's); only from
    adapter_model.safetensors (peft would unpickle adapter_model.bin), decrypted in memory when it is encrypted."""
    return attach_adapter(base, folder)


def unwrap(model):
    """The transformers model inside a peft wrapper (adapters stay injected in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def adds_virtual_tokens(model) -> bool:
    """Prefix, prompt and p-tuning: peft prepends virtual tokens and takes only a 2D attention mask."""
    if not getattr(model, "peft_config", None):
        return False
    peft_type = str(next(iter(model.peft_config.values())).peft_type)
    return any(k in peft_type for k in ("PREFIX", "PROMPT", "P_TUNING"))


def peft_config(config: RunConfig, model_dir: str, task_type: str = "CAUSAL_LM") -> PeftConfig:
    """peft's config for the method; task_type SEQ_CLS also keeps a new classifier head trainable."""
    method = config.method
    if method in LORA_METHODS:
        lora = config.lora
        return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora.target_modules, use_dora=method == "dora",
                              use_rslora=method == "rslora", task_type=task_type)
    if method == "ia3":
        return IA3Config(target_modules=config.ia3.target_modules,
                         feedforward_modules=config.ia3.feedforward_modules, task_type=task_type)
    if method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=config.prefix.num_virtual_tokens, task_type=task_type,
                                  init_weights="zero" if config.prefix.init == "zero" else None)
    if method == "prompt":
        prompt = config.prompt
        if prompt.init_text is None:
            return PromptTuningConfig(num_virtual_tokens=prompt.num_virtual_tokens, task_type=task_type)
        return PromptTuningConfig(num_virtual_tokens=prompt.num_virtual_tokens, prompt_tuning_init="TEXT",
                                  prompt_tuning_init_text=prompt.init_text, tokenizer_name_or_path=model_dir,
                                  task_type=task_type)
    raise ValueError(f"no peft config for method {method!r}")


def freeze_all_but(model: torch.nn.Module, config: RunConfig) -> torch.nn.Module:
    """Train the last blocks, the final norm and matching modules in fp32; freeze the rest as loaded.

    The frozen part keeps the load dtype (bf16 where it is fast, see pick_dtype): autocast runs the
    fp32 trained blocks in bf16 too, while the optimizer updates fp32 weights so small steps are kept.
    """
    freeze = config.freeze
    blocks, norm = decoder_blocks(model.get_decoder())
    if freeze.last_n_layers > len(blocks):
        raise TunelabError(f"freeze.last_n_layers={freeze.last_n_layers}, but {config.model} has "
                           f"{len(blocks)} transformer blocks")
    trained = list(blocks[len(blocks) - freeze.last_n_layers:])
    if freeze.train_norm and norm is not None:
        trained.append(norm)
    names = {module: name for name, module in model.named_modules()}
    for pattern in freeze.modules:
        matched = [module for module, name in names.items() if fnmatchcase(name, pattern)]
        if not matched:
            raise TunelabError(f"freeze.modules: {pattern!r} matches no module of {config.model} "
                               f"(the first block is named {names[blocks[0]]!r})")
        trained.extend(matched)
    model.requires_grad_(False)
    for module in trained:
        module.float().requires_grad_(True)
    return model


def decoder_blocks(decoder: torch.nn.Module) -> tuple[torch.nn.ModuleList, torch.nn.Module | None]:
    """The decoder's blocks and its final norm: Llama-style (layers, norm), T5 (block, final_layer_norm) or
    BART (layers, and no final norm: its blocks normalize their own outputs)."""
    blocks = decoder.layers if hasattr(decoder, "layers") else decoder.block
    norms = (getattr(decoder, name, None) for name in ("norm", "final_layer_norm", "layer_norm"))
    return blocks, next((norm for norm in norms if norm is not None), None)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameters; a 4-bit weight counts its elements, not its packed bytes."""
    params = list(model.parameters())
    trainable = sum(_elements(p) for p in params if p.requires_grad)
    total = sum(_elements(p) for p in params)
    return {"trainable_params": trainable, "total_params": total}


def _elements(param: torch.Tensor) -> int:
    # bitsandbytes stores two 4-bit values per byte; its quant_state keeps the weight's real shape.
    quant_state = getattr(param, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else param.numel()
