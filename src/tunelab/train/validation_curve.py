"""The validation-loss curve: every few steps, the loss on a small fixed val subset, in train_log.jsonl.

Why: the training loss alone cannot show overfitting; a validation loss drawn next to it can (as on
OpenAI's fine-tuning dashboard). The dashboard and training_curve.png draw the ``val_loss`` rows this
callback appends to train_log.jsonl: {"step", "epoch", "val_loss", "tokens"}, in the format of the
training rows (JsonlLogCallback), "tokens" being the tokens trained up to that step.

It is on by default (``train.val_loss``), so it stays cheap: the loss is taken on at most
``max_examples`` val examples, a seeded subset that is the same at every point (so the points are
comparable), every ``every_steps`` optimizer steps (auto: about ten points per run) and at the last
step. The loss is early stopping's (train/early_stopping.py): the causal-LM loss per answer token,
unless the recipe gives its own ``loss_fn(model, examples) -> float``.

No callback is made when ``train.val_loss`` is null, when the run has no val rows (nothing to measure;
not an error), or when ``train.early_stopping`` is on: its own evaluations, on the whole val split,
are then the validation curve, and the same step is never logged twice.

The rows are not added to Trainer's log history, so a sweep's pruning (tunelab/sweep.py) reports the
same kind of loss at a given step in every trial: the auto schedule depends on each trial's length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from tunelab.config import VAL_LOSS_POINTS, RunConfig
from tunelab.runs.folder import RunFolder
from tunelab.train.early_stopping import causal_lm_validation_loss, eagerly
from tunelab.train.fit import JsonlLogCallback


def fixed_subset(examples: list, limit: int, seed: int) -> list:
    """At most ``limit`` of ``examples``: a seeded choice, in their order, the same on every call."""
    if len(examples) <= limit:
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


def interval(every_steps: int | str, total_steps: int) -> int:
    """Steps between points: ``every_steps``, or for auto ceil(total / VAL_LOSS_POINTS), at least 1."""
    if every_steps != "auto":
        return every_steps
    return max(1, math.ceil(total_steps / VAL_LOSS_POINTS))


class ValidationCurve(TrainerCallback):
    """Validation loss every ``every_steps`` optimizer steps and at the last one, as val_loss rows."""

    def __init__(self, every_steps: int | str, val_loss: Callable[[object], float], log_path: Path):
        self.every_steps = every_steps  # "auto" is resolved when the run's length is known (on_train_begin)
        self.every: int | None = None
        self.val_loss = val_loss  # model -> loss on the fixed val subset
        self.log = JsonlLogCallback(log_path, [])  # fit gives it the run's tokens per step (with_train_log)
        self.last_evaluated_step: int | None = None

    @classmethod
    def from_config(cls, config: RunConfig, val_examples: list, pad_token_id: int, run_dir: Path,
                    loss_fn: Callable[[object, list], float] | None = None) -> ValidationCurve | None:
        """The callback for a run, or None (train.val_loss null, no val examples, or early stopping on).

        ``val_examples`` are the encoded val rows; ``loss_fn(model, examples)`` takes the loss of the
        subset, by default ``validation_loss`` (causal LM, examples as ``Encoded``), as early stopping does.
        """
        settings = config.train.val_loss
        if settings is None or config.train.early_stopping is not None or not val_examples:
            return None
        loss_fn = loss_fn or causal_lm_validation_loss(config, pad_token_id)
        subset = fixed_subset(val_examples, settings.max_examples, config.data_seed)
        return cls(settings.every_steps, lambda model: loss_fn(model, subset), RunFolder(run_dir).train_log_path)

    def on_train_begin(self, args, state, control, **kwargs):
        self.every = interval(self.every_steps, state.max_steps)
        self.last_evaluated_step = state.global_step  # resumed: that step is logged already, or is no point

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Before the step's training row (Trainer logs after on_step_end), so each step's rows come together.
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            self._evaluate(args, state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.last_evaluated_step != state.global_step:  # stopped before its last step: the end is a point too
            self._evaluate(args, state, control, model)

    def _evaluate(self, args, state, control, model) -> None:
        loss = eagerly(self.val_loss, model)
        self.last_evaluated_step = state.global_step
        self.log.on_log(args, state, control, logs={"val_loss": loss})
