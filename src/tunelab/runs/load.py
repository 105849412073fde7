"""``load_run``: a finished run, or a plain model, ready to use, for every task and method.

A run is loaded the way it was trained: a causal LM (its base plus ``adapter/``, or ``model/``), an
encoder-decoder for ``task: seq2seq``, or for ``task: classification`` a sequence-classifier with the
run's trained head and label set. The tokenizer is the one saved with the weights (same chat
template and padding as in training). ``tunelab eval``, ensembles, export, distillation teachers and
(next) the registry and the server all load runs here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          set_seed)

from tunelab.config import RunConfig
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.load import (frozen_dtype, is_encoder_decoder, load_causal_lm, load_classifier, load_seq2seq,
                                   load_tokenizer, model_inputs)
from tunelab.modeling.methods import load_adapter
from tunelab.modeling.sealed_weights import from_pretrained
from tunelab.runs.folder import RunFolder


@dataclass
class LoadedModel:
    """A model ready to use, with what evaluating or serving it needs."""

    config: RunConfig
    tokenizer: object
    model: object  # a run's tuned model, or the plain model
    load_base: Callable[[], object] | None  # a run's base model when ``model`` is not an adapter over it
    labels: list[str] | None  # the run's label set; None for free text or a plain model
    classifier: bool = False
    inputs: list[str] | None = None  # tokenizer outputs a classifier's forward takes
    seq2seq: bool = False  # an encoder-decoder model (task: seq2seq run, or a plain T5/BART)
    run: RunFolder | None = None  # None for a plain model


def load_model(name: str) -> LoadedModel:
    """A run folder (``load_run``) or a plain model (folder, hub id or embedded name), ready for inference."""
    if RunFolder.is_run(name):
        return load_run(name)
    if is_encoder_decoder(name):
        config = RunConfig(model=name, task="seq2seq")
        tokenizer, model = load_seq2seq(config)
        return LoadedModel(config, tokenizer, model, None, None, seq2seq=True)
    config = RunConfig(model=name)
    tokenizer, model = load_causal_lm(config)
    prepare_for_inference(model, config)
    return LoadedModel(config, tokenizer, model, None, None)


def load_run(path, for_merging: bool = False) -> LoadedModel:
    """A finished run's model, ready for inference.

    ``for_merging``: the adapter on an fp32 copy of the base (never 4-bit, never bf16) with peft's own
    layers, as merging it into the base weights needs (causal LM and seq2seq runs).
    """
    run = RunFolder(path)
    config = run.config()
    saved = run.weights_dir
    if config.task == "classification":
        return _classifier_run(run, config)
    seq2seq = config.task == "seq2seq"
    load_base = load_seq2seq if seq2seq else load_causal_lm
    base_class = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    labels = run.labels(config)
    tokenizer = load_tokenizer(saved)
    dtype = torch.float32 if for_merging else None
    if saved.name == "adapter":
        model = load_adapter(load_base(config, dtype=dtype, quantize=not for_merging)[1], saved)
        base = None
    else:
        model = from_pretrained(base_class, saved, dtype=frozen_dtype(config, dtype))
        base = lambda: prepare_for_inference(load_base(config)[1], config)  # noqa: E731
    if not for_merging:
        prepare_for_inference(model, config)
    return LoadedModel(config, tokenizer, model.eval() if for_merging else model, base, labels, seq2seq=seq2seq,
                       run=run)


def _classifier_run(run: RunFolder, config: RunConfig) -> LoadedModel:
    """The run's classifier: its base with the trained head (adapter/), or the whole trained model (model/).

    The base arm is the model the run started from: with the run's seed, the fresh head gets the same
    initial weights it had before training.
    """
    saved, labels = run.weights_dir, run.classifier_labels()

    def untrained():
        set_seed(config.train.seed)
        return prepare_for_inference(load_classifier(config, labels)[1], config)

    tokenizer = load_tokenizer(saved)
    if saved.name == "adapter":
        model = load_adapter(untrained(), saved)
        base = None
    else:
        model = from_pretrained(AutoModelForSequenceClassification, saved, dtype=frozen_dtype(config, None))
        base = untrained
    prepare_for_inference(model, config)
    return LoadedModel(config, tokenizer, model, base, labels, True, model_inputs(model), run=run)
