"""Supervised fine-tuning recipe: setup -> train -> evaluate (base vs tuned) -> save and report.

Reads top to bottom. Records become chat messages rendered by the model's own chat template; loss
is taken on assistant answers only; examples are packed with block-causal masks; the frozen base
runs in bf16 where the hardware supports it while adapters and optimizer state stay fp32.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from tunelab.config import RunConfig, dump_config
from tunelab.data.dataset import Splits, load_splits, write_quarantine
from tunelab.data.pack import collate_packed, pack
from tunelab.data.templates import encode_chat
from tunelab.errors import TunelabError
from tunelab.eval.suite import build_eval_task, evaluate_model, label_choices, prediction_rows, to_messages
from tunelab.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from tunelab.models import resolve_model
from tunelab.report import comparison_table, write_report
from tunelab.precision import pick_dtype
from tunelab.train.common import (AnswerLossTrainer, JsonlLogCallback, LossInBarProgress, peak_rss_mb,
                                  training_arguments)
from tunelab.train.methods import apply_method, parameter_counts


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
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = pick_dtype(config.train.precision, config.method)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    return tokenizer, model


def encode_train(tokenizer, splits: Splits, choices, config: RunConfig):
    examples = [encode_chat(tokenizer, to_messages(r, choices, config.data.label_prompt, config.data.system_prompt),
                            config.train.max_length) for r in splits.train]
    examples = [e for e in examples if e.loss_tokens > 0]
    if not examples:
        raise TunelabError(f"no training example has an answer inside train.max_length={config.train.max_length}")
    random.Random(config.train.seed).shuffle(examples)
    rows = pack(examples, config.train.max_length) if config.train.packing else [[e] for e in examples]
    return examples, rows


def run_sft(config: RunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    # ---- setup
    set_seed(config.train.seed)
    run_dir = prepare_run_dir(config, resume, overwrite)
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    splits = load_splits(config.data, config.train.seed)
    write_quarantine(splits.quarantined, run_dir / "quarantine.jsonl")
    if splits.kind == "text":
        raise TunelabError("this data is raw text (no answers to learn); continued pretraining is task: pretrain")
    choices = label_choices(splits.train, splits.kind)
    data_summary = splits.summary() | {"labels": choices}
    atomic_write_json(run_dir / "data_summary.json", data_summary)
    print(f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test"
          f"{f', {len(splits.quarantined)} quarantined' if splits.quarantined else ''}", flush=True)

    tokenizer, model = load_base(config)
    examples, rows = encode_train(tokenizer, splits, choices, config)
    test, val = _cap(splits.test, config), _cap(splits.val, config)
    eval_task = build_eval_task(tokenizer, test, val, splits.kind, choices, config.data.label_prompt,
                                config.data.system_prompt, config.train.max_length)

    model = apply_method(model, config)
    counts = parameter_counts(model)
    print(f"model: {config.model} ({next(model.parameters()).dtype}), method {config.method}: "
          f"{counts['trainable_params']:,} trainable of {counts['total_params']:,} parameters", flush=True)

    # ---- train
    tokens_per_row = [sum(len(e.input_ids) for e in row) for row in rows]
    batch = config.train.batch_size * config.train.gradient_accumulation
    tokens_per_step = [sum(tokens_per_row[i:i + batch]) for i in range(0, len(rows), batch)]
    trainer = AnswerLossTrainer(
        model=model,
        args=training_arguments(config, run_dir / "checkpoints"),
        train_dataset=rows,
        data_collator=lambda batch_rows: collate_packed(batch_rows, tokenizer.pad_token_id),
        callbacks=[JsonlLogCallback(run_dir / "train_log.jsonl", tokens_per_step)],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossInBarProgress)
    checkpoint = get_last_checkpoint(str(run_dir / "checkpoints")) if resume and (run_dir / "checkpoints").exists() else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - started
    steps_done = trainer.state.global_step
    epochs_done = trainer.state.epoch or 0.0
    tokens = int(sum(tokens_per_row) * epochs_done) if config.train.max_steps is None else sum(
        tokens_per_step[i % len(tokens_per_step)] for i in range(steps_done))
    train_metrics = {"tokens": tokens, "seconds": round(seconds, 2),
                     "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
                     "peak_rss_mb": round(peak_rss_mb(), 1), "final_loss": _final_loss(trainer, result),
                     "steps": steps_done, "examples": len(examples), "rows": len(rows), **counts}
    out_name = "adapter" if config.method != "full" else "model"
    model.save_pretrained(run_dir / out_name)
    tokenizer.save_pretrained(run_dir / out_name)

    # ---- evaluate: the base model (adapters disabled) and the tuned model, same prompts, same examples
    bs, new, width = config.eval.batch_size, config.eval.max_new_tokens, config.train.max_length
    metrics = {"train": train_metrics, "data": data_summary}
    arms = {}
    if config.eval.baseline:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                metrics["base"], arms["base"] = evaluate_model(model, tokenizer, eval_task, bs, new, width, "base")
        else:
            _, base_model = load_base(config)
            metrics["base"], arms["base"] = evaluate_model(base_model, tokenizer, eval_task, bs, new, width, "base")
            del base_model
    metrics["tuned"], arms["tuned"] = evaluate_model(model, tokenizer, eval_task, bs, new, width, "tuned")

    # ---- save and report
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_jsonl(run_dir / "predictions.jsonl", prediction_rows(eval_task, arms))
    report = write_report(run_dir)
    print(comparison_table(metrics))
    print(f"run folder: {run_dir}  (report: {report})")
    return metrics


def _cap(records: list, config: RunConfig) -> list:
    """A seeded subset of at most eval.max_examples records."""
    limit = config.eval.max_examples
    return random.Random(config.train.seed).sample(records, limit) if limit and len(records) > limit else records


def _final_loss(trainer, result) -> float:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return round(float(losses[-1] if losses else result.training_loss), 4)
