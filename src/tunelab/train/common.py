"""Shared training plumbing: dtype choice, Trainer arguments, logging callbacks, resource use.

Training runs on transformers' Trainer (schedules, accumulation, checkpoints, resume). The only
thing it is taught here is our loss: summed over answer tokens and divided by the number of loss
tokens in the whole accumulated batch, computed without full-vocabulary logits.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from tunelab.config import RunConfig
from tunelab.precision import autocast_like
from tunelab.train.loss import loss_sum


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if os.uname().sysname == "Darwin" else peak / 1024


class AnswerLossTrainer(Trainer):
    """Trainer whose loss is our token-normalised answer loss (no other behaviour changes)."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Make Trainer count loss tokens over the whole accumulated batch for every model type.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with autocast_like(model):
            total, count = loss_sum(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        loss = total / denominator
        return (loss, None) if return_outputs else loss


class LossInBarProgress(ProgressCallback):
    """The usual progress bar with ETA, showing the latest loss in the bar instead of printing dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}")


class JsonlLogCallback(TrainerCallback):
    """Append every logged step to train_log.jsonl with trained tokens and elapsed seconds."""

    def __init__(self, path: Path, tokens_per_step: list[int]):
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        if "loss" in row:
            row["tokens"] = sum(self.tokens_per_step[:state.global_step])
            row["elapsed"] = round(time.perf_counter() - self.started, 2)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def training_arguments(config: RunConfig, checkpoint_dir: Path) -> TrainingArguments:
    t = config.train
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
