"""The fit loop every recipe trains with: Trainer arguments, logging callbacks, resource use, saving.

Training runs on transformers' Trainer (schedules, accumulation, checkpoints, resume). The only
thing it is taught here is our loss: summed over answer tokens (or examples) and divided by their
number in the whole accumulated batch, computed without full-vocabulary logits. ``fit`` trains causal
LMs on packed rows; ``fit_padded`` trains classifiers and encoder-decoders on length-grouped, padded
batches. Both measure and save the same way.
"""

from __future__ import annotations

import json
import math
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import safe_globals

from tunelab.config import RunConfig
from tunelab.data.pack import collate_packed, collate_padded, width_multiple
from tunelab.data.templates import IGNORE_INDEX, Encoded
from tunelab.eval.suite import EvalTask, prediction_rows
from tunelab.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from tunelab.memory import peak_rss_mb, release_memory
from tunelab.modeling import sealed_weights
from tunelab.modeling.fast.compile import compiled_layers, should_compile
from tunelab.modeling.fast.segment_attention import uses_segment_attention
from tunelab.modeling.loss import loss_sum
from tunelab.modeling.methods import VIRTUAL_TOKEN_METHODS
from tunelab.modeling.precision import autocast_like
from tunelab.runs.folder import RunFolder
from tunelab.runs.report import comparison_table, write_report
from tunelab.train.checkpoints import SealCheckpoints, checkpoint_step, resumable_checkpoint
from tunelab.train.curriculum import curriculum_order
from tunelab.train.steps import StepSampler, plan_steps, tokens_by_global_step
from tunelab.train.trackers import trackers
from tunelab.security import files as sealed
from tunelab.security.crypto import is_encrypted_file

RELEASE_EVERY_STEPS = 8  # see ReleaseMemoryCallback


class SealedTrainer(Trainer):
    """Trainer whose checkpoints are encrypted at rest when a master key is set (modeling/sealed_weights.py).

    Trainer writes a checkpoint's weights with ``save_pretrained`` and its own state (optimizer.pt, scheduler.pt,
    rng_state.pth, training_args.bin) with ``torch.save``, and reads them back by path. With a key, the methods
    below write each of them encrypted and read them decrypted in memory (the seal of train/checkpoints.py hashes
    the encrypted files, as it finds them on disk). tunelab trains in one process, so these cover Trainer's
    single-process paths. Without a key, and for a checkpoint written without one, every method is Trainer's own.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not sealed.encryption_on():
            return super()._save(output_dir, state_dict)
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        sealed_weights.save_pretrained(self.accelerator.unwrap_model(self.model, keep_torch_compile=False), folder)
        tokenizer = self.processing_class
        if tokenizer is None:
            tokenizer = getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        sealed_weights.save_torch(self.args, folder / TRAINING_ARGS_NAME)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not sealed.encryption_on():
            return super()._save_optimizer_and_scheduler(output_dir)
        sealed_weights.save_torch(self.optimizer.state_dict(), Path(output_dir) / OPTIMIZER_NAME)
        sealed_weights.save_torch(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _save_rng_state(self, output_dir: str) -> None:
        if not sealed.encryption_on():
            return super()._save_rng_state(output_dir)
        states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.random.get_rng_state()
        sealed_weights.save_torch(states, Path(output_dir) / "rng_state.pth")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        folder = Path(resume_from_checkpoint)
        if not sealed_weights.is_sealed(folder):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        if hasattr(model, "peft_config"):
            weights = sealed_weights.read_weights(folder / sealed_weights.ADAPTER_WEIGHTS)
            sealed_weights.load_adapter_weights(model, weights, model.active_adapters[0], folder)
        else:
            weights = sealed_weights.read_weights(folder / sealed_weights.MODEL_WEIGHTS)
            self._issue_warnings_after_load(model.load_state_dict(weights, False))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not is_encrypted_file(Path(checkpoint) / OPTIMIZER_NAME):
            return super()._load_optimizer_and_scheduler(checkpoint)
        self.optimizer.load_state_dict(sealed_weights.load_torch(Path(checkpoint) / OPTIMIZER_NAME, map_location="cpu"))
        self.lr_scheduler.load_state_dict(sealed_weights.load_torch(Path(checkpoint) / SCHEDULER_NAME))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None or not is_encrypted_file(Path(checkpoint) / "rng_state.pth"):
            return super()._load_rng_state(checkpoint)
        with safe_globals():  # numpy's RNG state, as Trainer allows it
            states = sealed_weights.load_torch(Path(checkpoint) / "rng_state.pth")
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.random.set_rng_state(states["cpu"])
        if torch.cuda.is_available() and "cuda" in states:
            torch.cuda.random.set_rng_state(states["cuda"])


class AnswerLossTrainer(SealedTrainer):
    """Trainer whose loss is our token-normalised answer loss (no other behaviour changes)."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_fn=loss_sum, train_sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn  # (model, batch) -> (summed loss, loss tokens)
        self.train_sampler = train_sampler  # keeps each optimizer step's micro-batches together
        # Make Trainer count loss tokens over the whole accumulated batch for every model type.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with autocast_like(model):
            total, count = self.loss_fn(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        loss = total / denominator
        return (loss, None) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler or super()._get_train_sampler(train_dataset)


class ReleaseMemoryCallback(TrainerCallback):
    """release_memory() every ``every`` optimizer steps, after the step's activations have been freed.

    A release is not free: the next step touches those pages again and the kernel faults them back
    in, about 6% of a step on SmolLM2-135M on CPU. Releasing every 8 steps measured 9% more tokens/s
    than every step (3 epochs of the throughput benchmark), and peak memory 30 MB (1.5%) higher.
    """

    def __init__(self, every: int = RELEASE_EVERY_STEPS):
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            release_memory()


class LossInBarProgress(ProgressCallback):
    """The usual progress bar with ETA, showing the latest loss in the bar instead of printing dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}")


class JsonlLogCallback(TrainerCallback):
    """Append every logged step to train_log.jsonl with trained tokens (training and validation loss rows)
    and elapsed seconds (training rows).

    ``tokens_per_step`` are the tokens of each optimizer step, in order; a list shorter than the run
    (one epoch of ``fit_padded``) repeats.
    """

    def __init__(self, path: Path, tokens_per_step: list[int]):
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.started = time.perf_counter()

    def tokens_until(self, step: int) -> int:
        """Tokens trained in steps 1 to ``step``."""
        per_step, n = self.tokens_per_step, len(self.tokens_per_step)
        if not n:
            return 0
        rounds, rest = divmod(step, n)
        return rounds * sum(per_step) + sum(per_step[:rest])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        if "loss" in row or "val_loss" in row:
            row["tokens"] = self.tokens_until(state.global_step)
        if "loss" in row:
            row["elapsed"] = round(time.perf_counter() - self.started, 2)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def with_train_log(path: Path, tokens_per_step: list[int], callbacks) -> list[TrainerCallback]:
    """The run's JsonlLogCallback, then ``callbacks``. Those that write validation-loss rows through a
    JsonlLogCallback of their own (``callback.log``: early stopping, the validation curve) count trained
    tokens with the same ``tokens_per_step``, so every row of a step has the same tokens."""
    for callback in callbacks:
        if isinstance(getattr(callback, "log", None), JsonlLogCallback):
            callback.log.tokens_per_step = tokens_per_step
    return [JsonlLogCallback(path, tokens_per_step), *callbacks]


def micro_batch_plan(batch_size: int, max_length: int, micro_batch_tokens: int) -> tuple[int, int]:
    """Split ``batch_size`` rows into equal micro-batches of at most ``micro_batch_tokens`` tokens.

    Returns (rows per micro-batch, micro-batches per step). Activation memory grows with the tokens
    in one forward pass, not with the batch size, so this caps memory without changing the update.
    """
    most = max(1, micro_batch_tokens // max_length)
    rows = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= most)
    return rows, batch_size // rows


def optimizer_steps(config: RunConfig, examples: int) -> int:
    """Optimizer steps Trainer takes over ``examples`` rows fed one row per item in the micro-batches of
    ``training_arguments``' memory plan: ``train.max_steps``, else epochs times the steps of one epoch,
    whose last step may hold fewer rows (counted as Trainer counts them)."""
    t = config.train
    if t.max_steps:
        return t.max_steps
    rows, passes = micro_batch_plan(t.batch_size, t.max_length, t.micro_batch_tokens)
    per_epoch = max(1, math.ceil(math.ceil(examples / rows) / (t.gradient_accumulation * passes)))
    return math.ceil(t.epochs * per_epoch)


def training_arguments(config: RunConfig, checkpoint_dir: Path, micro_batches: tuple[int, int] | None = None,
                       total_steps: int | None = None) -> TrainingArguments:
    """Trainer arguments from the config; ``micro_batches`` = (items per forward pass, passes per update)
    overrides the memory plan of ``micro_batch_plan``. With ``total_steps`` known, warmup is
    ``warmup_ratio`` of them rounded down, so a short run never spends a whole step at learning rate 0
    (Trainer rounds the ratio up)."""
    t = config.train
    warmup = int(t.warmup_ratio * total_steps) if total_steps else t.warmup_ratio
    rows, accumulation = micro_batches or micro_batch_plan(t.batch_size, t.max_length, t.micro_batch_tokens)
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=accumulation if micro_batches else t.gradient_accumulation * accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=warmup,
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
        report_to=list(t.report_to),  # next to JsonlLogCallback's train_log.jsonl, never instead of it
        run_name=config.run_name,  # the MLflow and W&B run's name
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def fit(model, tokenizer, examples: list[Encoded], config: RunConfig, folder: RunFolder, resume: bool,
        callbacks: list[TrainerCallback] = (), loss_fn=loss_sum) -> dict:
    """Train on ``examples`` (in the order given) with Trainer; save the adapter (or full model).

    Steps hold ``batch_size * gradient_accumulation`` examples each, packed into micro-batches (see
    train/steps.py); steps are shuffled every epoch unless ``train.curriculum`` orders them (see
    train/curriculum.py). ``callbacks`` are extra
    Trainer callbacks (for example validation and early stopping); ``loss_fn(model, batch) -> (summed
    loss, loss tokens)`` replaces the answer loss (distillation). Returns the training figures.
    """
    t = config.train
    packing = t.packing and config.method not in VIRTUAL_TOKEN_METHODS
    if t.packing and not packing:
        print(f"packing: off for method {config.method} (peft adds its virtual tokens to a 2D padding mask only, "
              f"not to packed rows)", flush=True)
    shuffle = t.curriculum == "none"
    examples = curriculum_order(model, examples, t.curriculum, tokenizer.pad_token_id, folder.curriculum_path)
    segments = packing and uses_segment_attention(model)
    plan = plan_steps(examples, t.batch_size * t.gradient_accumulation, t.max_length, t.micro_batch_tokens, packing,
                      one_row=segments)
    multiple = width_multiple("cuda" if torch.cuda.is_available() else "cpu", segments)  # where Trainer will train
    collate_rows = partial(collate_packed, pad_to_multiple_of=multiple, segments=segments) if packing else collate_padded
    empty = [[Encoded([tokenizer.pad_token_id], [IGNORE_INDEX])]]

    def collate(items: list) -> dict:
        (rows,) = items  # one micro-batch per item
        return collate_rows(rows or empty, tokenizer.pad_token_id)

    total_steps = t.max_steps or math.ceil(t.epochs * plan.steps)
    epochs = math.ceil(t.epochs) if not t.max_steps else max(1, math.ceil(t.max_steps / plan.steps))
    tokens_per_step = tokens_by_global_step(plan, epochs, t.seed, shuffle)
    compiled = should_compile(t.compile, plan.per_step * total_steps)
    with trackers(config, folder.path):
        trainer = AnswerLossTrainer(
            model=model,
            args=training_arguments(config, folder.checkpoints_dir, micro_batches=(1, plan.per_step),
                                    total_steps=total_steps),
            train_dataset=plan.micro_batches,
            data_collator=collate,
            callbacks=with_train_log(folder.train_log_path, tokens_per_step, callbacks),
            loss_fn=loss_fn,
            train_sampler=StepSampler(plan, t.seed, shuffle),
        )
        if compiled:
            print("compiling the decoder layers (train.compile; 30-45 s the first time, a few seconds once cached)",
                  flush=True)
        with compiled_layers(model, compiled):
            figures = train_and_measure(trainer, folder, resume, tokens_per_step, total_steps)
    save_weights(model, tokenizer, folder, config)
    return figures | {"micro_batches_per_step": plan.per_step, "compiled": compiled, "segment_attention": segments,
                      "rows": sum(len(rows) for rows in plan.micro_batches if rows)}


def fit_padded(model, tokenizer, features: list[dict], collator, trainer_class: type[Trainer], loss_fn,
               config: RunConfig, folder: RunFolder, resume: bool, callbacks=()) -> dict:
    """Train on length-grouped, dynamically padded batches (classifiers, encoder-decoders); save the
    adapter (or full model) and return the training figures.

    ``trainer_class(loss_fn=...)`` computes the loss of a micro-batch (summed, divided by the targets of
    the whole accumulated batch). Tokens count every input and target token of a step.
    """
    total_steps = optimizer_steps(config, len(features))
    args = training_arguments(config, folder.checkpoints_dir, total_steps=total_steps)
    args.train_sampling_strategy = "group_by_length"
    batch = config.train.batch_size * config.train.gradient_accumulation
    tokens = [len(f["input_ids"]) + (len(f["labels"]) if isinstance(f["labels"], list) else 0) for f in features]
    tokens_per_step = [sum(tokens[i:i + batch]) for i in range(0, len(features), batch)]
    with trackers(config, folder.path):
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=features,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=with_train_log(folder.train_log_path, tokens_per_step, callbacks),
            loss_fn=loss_fn,
        )
        figures = train_and_measure(trainer, folder, resume, tokens_per_step, total_steps) | {"examples": len(features)}
    save_weights(model, tokenizer, folder, config)
    return figures


def save_weights(model, tokenizer, folder: RunFolder, config: RunConfig) -> None:
    """The adapter (or, for whole-model methods, the model) with its tokenizer, in the run folder."""
    out_dir = folder.weights_dir_for(config.method)
    sealed_weights.save_pretrained(model, out_dir)  # encrypted at rest when a master key is set
    tokenizer.save_pretrained(out_dir)


def train_and_measure(trainer: Trainer, folder: RunFolder, resume: bool, tokens_per_step: list[int],
                      planned_steps: int) -> dict:
    """Run Trainer (when resuming, from the last checkpoint, verified: train/checkpoints.py) and return
    tokens, time, memory and loss. Every checkpoint it saves is sealed."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossInBarProgress)
    trainer.add_callback(ReleaseMemoryCallback)
    trainer.add_callback(SealCheckpoints)
    checkpoint = resumable_checkpoint(folder.checkpoints_dir) if resume else None
    first_step = checkpoint_step(checkpoint) if checkpoint else 0
    if resume:
        print(f"resuming from {checkpoint.name}, step {first_step} of {planned_steps}" if checkpoint else
              f"no checkpoint in {folder.checkpoints_dir} yet: starting from step 0 of {planned_steps}", flush=True)
        forget_logged_steps_after(folder.train_log_path, first_step)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:  # a run stopped by an error or Ctrl-C leaves no progress bar behind (Trainer closes it on success)
        close_progress_bars(trainer)
    seconds = time.perf_counter() - started
    steps = trainer.state.global_step
    tokens = sum(tokens_per_step[i % len(tokens_per_step)] for i in range(first_step, steps))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "final_loss": round(float(losses[-1] if losses else result.training_loss), 4),
            "steps": steps}


def forget_logged_steps_after(log_path: Path, step: int) -> None:
    """Drop train_log.jsonl rows past ``step`` (training and validation loss alike): a resumed run trains
    those steps again and logs them anew."""
    rows = read_jsonl(log_path)
    kept = [row for row in rows if row.get("step", 0) <= step]
    if len(kept) < len(rows):
        atomic_write_jsonl(log_path, kept)


def close_progress_bars(trainer: Trainer) -> None:
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


def finish_run(folder: RunFolder, metrics: dict, task: EvalTask | None = None, arms: dict | None = None) -> dict:
    """Write metrics.json, predictions.jsonl (each arm's answers on ``task``), eval_set.jsonl (the evaluated
    rows, so the same items can be scored again for a paired comparison), report.md and the artifacts'
    checksums, mark the run finished, and print the base-vs-tuned table."""
    atomic_write_json(folder.metrics_path, metrics)
    sealed.write_jsonl(folder.predictions_path, prediction_rows(task, arms or {}) if task else [])
    if task and task.records:
        sealed.write_jsonl(folder.eval_set_path, [record.to_json() for record in task.records])
    report = write_report(folder.path)
    folder.write_artifacts()
    folder.mark_ended("finished")
    print(comparison_table(metrics))
    print(f"run folder: {folder.path}  (report: {report})")
    return metrics
