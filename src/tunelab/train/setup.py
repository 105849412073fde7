"""The start every recipe shares: data, base model and run folder, checked in that order.

Bad data or a missing model fails before a run folder exists, so a failed start never blocks the
next attempt with "run folder already exists".
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from tunelab.config import RunConfig, dump_config
from tunelab.data.dataset import Splits, load_splits, write_quarantine
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.models import resolve_model
from tunelab.precision import pick_dtype
from tunelab.train.lean_activations import use_lean_activations
from tunelab.train.methods import apply_method, parameter_counts, quantization_config
from tunelab.train.segment_attention import (grouped_query_attention_on_cpu, use_segment_attention,
                                             wants_segment_attention)
from tunelab.train.student import keep_evenly_spaced_blocks


@dataclass
class Started:
    splits: Splits
    tokenizer: object
    model: object
    run_dir: Path


def prepare_run_dir(config: RunConfig, resume: bool, overwrite: bool) -> Path:
    run_dir = config.run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not overwrite:
            raise TunelabError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                               f"--overwrite to replace it, or choose another run_name")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_base(config: RunConfig):
    """Tokenizer and base causal LM, frozen weights in the dtype the hardware runs fastest, with the
    memory-lean RMSNorm and SwiGLU of train/lean_activations.py where the model family has them.

    A distillation student with ``distill.student_layers`` set keeps only that many blocks, here, so
    every place that rebuilds a run's base (its baseline, ``tunelab eval``) gets the same student.
    """
    quantization = quantization_config(config)  # 4-bit for qlora, else None
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = pick_dtype(config.train.precision, config.method)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa",
                                                 quantization_config=quantization)
    if config.task == "distill" and config.distill.student_layers:
        model = keep_evenly_spaced_blocks(model, config.distill.student_layers, config.model)
    if wants_segment_attention(config):
        use_segment_attention(model)
    grouped_query_attention_on_cpu(model)
    use_lean_activations(model)
    return tokenizer, model


def start_run(config: RunConfig, resume: bool, overwrite: bool, kinds: tuple[str, ...], hint: str,
              load: Callable[[RunConfig, Splits], tuple] | None = None) -> Started:
    """Load and check data, load the model, then create the run folder with config and quarantine.

    ``load(config, splits)`` returns (tokenizer, model) for recipes whose model is not the causal LM of
    load_base, such as a classification head sized by the label set.
    """
    set_seed(config.train.seed)
    splits = load_splits(config.data, config.data_seed)
    if splits.kind not in kinds:
        where = config.data.train or ", ".join(source.train for source in config.data.mix)
        raise TunelabError(f"{where}: the rows are {splits.kind} records; {hint}")
    tokenizer, model = load(config, splits) if load else load_base(config)
    run_dir = prepare_run_dir(config, resume, overwrite)
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    write_quarantine(splits.quarantined, run_dir / "quarantine.jsonl")
    quarantined = f", {len(splits.quarantined)} quarantined (see {run_dir}/quarantine.jsonl)" if splits.quarantined else ""
    print(f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test{quarantined}", flush=True)
    return Started(splits, tokenizer, model, run_dir)


def write_data_summary(run_dir: Path, splits: Splits, **extra) -> dict:
    summary = splits.summary() | extra
    atomic_write_json(run_dir / "data_summary.json", summary)
    return summary


def with_method(model, config: RunConfig, task_type: str = "CAUSAL_LM") -> tuple[object, dict]:
    """Apply the training method; print and return trainable vs total parameter counts."""
    model = apply_method(model, config, task_type)
    counts = parameter_counts(model)
    print(f"model: {config.model} ({next(model.parameters()).dtype}), method {config.method}: "
          f"{counts['trainable_params']:,} trainable of {counts['total_params']:,} parameters", flush=True)
    return model, counts


def cap_examples(records: list, config: RunConfig) -> list:
    """A seeded subset of at most eval.max_examples records (all of them when that is null)."""
    limit = config.eval.max_examples
    return random.Random(config.data_seed).sample(records, limit) if limit and len(records) > limit else records
