"""Every kind of model tunelab trains, loaded in one place: causal LMs, encoder-decoders, classifiers.

Loading only loads: the frozen weights in the dtype the hardware runs fastest (``pick_dtype``), 4-bit
for qlora, a distillation student cut to its blocks. Speed-ups are applied afterwards by
``prepare_for_training`` or ``prepare_for_inference`` (tunelab/modeling/fast/), so every caller
decides what it needs.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.model_files import config_options, resolve_model, tokenizer_options
from tunelab.modeling.methods import quantization_config
from tunelab.modeling.precision import pick_dtype
from tunelab.modeling.sealed_weights import from_pretrained
from tunelab.modeling.student import keep_evenly_spaced_blocks


def load_tokenizer(folder: str | Path):
    """A model's tokenizer, with its end token as padding when it has no pad token of its own."""
    tokenizer = AutoTokenizer.from_pretrained(folder, **tokenizer_options(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def frozen_dtype(config: RunConfig, dtype: torch.dtype | None) -> torch.dtype:
    return dtype or pick_dtype(config.train.precision, config.method)


def load_causal_lm(config: RunConfig, dtype: torch.dtype | None = None, quantize: bool = True):
    """Tokenizer and base causal LM of ``config`` (``dtype`` overrides the frozen-weight dtype; ``quantize``
    False loads a qlora base in full precision, as a merge needs).

    A distillation student with ``distill.student_layers`` set keeps only that many blocks, here, so
    every place that rebuilds a run's base (its baseline, ``tunelab eval``, a teacher) gets the same student.
    """
    quantization = quantization_config(config) if quantize else None  # 4-bit for qlora, else None
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(model_dir)
    model = from_pretrained(AutoModelForCausalLM, model_dir, dtype=frozen_dtype(config, dtype),
                            attn_implementation="sdpa", quantization_config=quantization)
    if config.task == "distill" and config.distill.student_layers:
        model = keep_evenly_spaced_blocks(model, config.distill.student_layers, config.model)
    return tokenizer, model


def is_encoder_decoder(name: str) -> bool:
    folder = resolve_model(name)
    return bool(getattr(AutoConfig.from_pretrained(folder, **config_options(folder)), "is_encoder_decoder", False))


def load_seq2seq(config: RunConfig, dtype: torch.dtype | None = None, quantize: bool = True):
    """Tokenizer and encoder-decoder model (4-bit for qlora); a decoder-only model is refused in one line."""
    quantization = quantization_config(config) if quantize else None
    model_dir = resolve_model(config.model)
    model_config = AutoConfig.from_pretrained(model_dir, **config_options(model_dir))
    if not getattr(model_config, "is_encoder_decoder", False):
        raise TunelabError(f"task: seq2seq needs an encoder-decoder model (T5, BART, ...); {config.model} is a "
                           f"decoder-only {model_config.model_type} model; use task: sft")
    tokenizer = load_tokenizer(model_dir)
    try:
        model = from_pretrained(AutoModelForSeq2SeqLM, model_dir, quantization_config=quantization,
                                dtype=frozen_dtype(config, dtype))
    except ValueError as exc:
        raise TunelabError(f"{config.model} ({model_config.model_type}) has no text-to-text model class; "
                           f"task: seq2seq needs a text encoder-decoder such as T5 or BART ({exc})") from None
    return tokenizer, model


def load_classifier(config: RunConfig, labels: list[str]):
    """Tokenizer and ``config.model`` with a fresh head whose outputs are ``labels``, in that order."""
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(model_dir)
    # Decoder heads read the last non-pad token, so the model config must know the pad id.
    model = from_pretrained(
        AutoModelForSequenceClassification, model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id,
        dtype=frozen_dtype(config, None))
    if config.distill.student_layers:  # a smaller student, with or without its teacher
        model = keep_evenly_spaced_blocks(model, config.distill.student_layers, config.model)
    return tokenizer, model


def model_inputs(model) -> list[str]:
    """The tokenizer outputs this model's forward takes (decoders take no token_type_ids)."""
    accepted = inspect.signature(model.forward).parameters
    return [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in accepted]
