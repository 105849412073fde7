"""Early stopping on validation loss, with the best weights put back when training ends.

Every ``train.early_stopping.eval_steps`` optimizer steps (and once more at the end) the callback
takes the loss of the model being trained on the encoded validation examples, logs it as
``val_loss`` in train_log.jsonl (with the tokens trained so far), and copies the trainable weights
whenever the loss beats the best so far by more than ``min_delta``. After ``patience`` evaluations in
a row without that, it stops training. When training ends, stopped or not, the best weights are
restored, so the adapter (or model) that ``fit`` saves is the best one seen. On ``--resume`` the
count starts afresh. With early stopping on, these evaluations are the run's validation curve
(train/validation_curve.py then logs none of its own).

The loss is the causal-LM loss per answer token unless a recipe gives its own ``loss_fn(model,
examples) -> float`` (classification: mean cross-entropy of the head on the encoded val rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import TrainerCallback

from tunelab.config import EarlyStoppingConfig, RunConfig
from tunelab.data.templates import Encoded
from tunelab.errors import TunelabError
from tunelab.inference.scoring import heldout_nll
from tunelab.modeling.precision import autocast_like
from tunelab.runs.folder import RunFolder
from tunelab.train.fit import JsonlLogCallback


def validation_loss(model, examples: list[Encoded], max_length: int, pad_token_id: int, batch_size: int) -> float:
    """Mean loss per loss token of ``model`` on ``examples``, in eval mode; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with autocast_like(model):
            total, tokens = heldout_nll(model, examples, max_length, pad_token_id, batch_size, desc="val loss")
    finally:
        model.train(was_training)
    return total / max(tokens, 1)


def causal_lm_validation_loss(config: RunConfig, pad_token_id: int) -> Callable[[object, list[Encoded]], float]:
    """``loss_fn(model, examples)``: ``validation_loss`` with the run's row width and a quarter of its eval
    batch (packed rows of train.max_length tokens are wider than most prompts)."""
    return partial(validation_loss, max_length=config.train.max_length, pad_token_id=pad_token_id,
                   batch_size=max(1, config.eval.batch_size // 4))


def eagerly(val_loss: Callable[[object], float], model) -> float:
    """``val_loss(model)`` with any compiled layers (train.compile) run eagerly: under no_grad they would
    compile graphs of their own for a few batches (measured on the tiny test Llama: 11-19 s, as long as
    the training graph's compile, against 0.01-0.2 s eager)."""
    with torch.compiler.set_stance("force_eager"):
        return val_loss(model)


class EarlyStopping(TrainerCallback):
    """Validation loss every ``eval_steps`` steps; stop after ``patience`` without improvement; keep the best."""

    def __init__(self, settings: EarlyStoppingConfig, val_loss: Callable[[object], float], log_path: Path):
        self.settings = settings
        self.val_loss = val_loss  # model -> loss on the validation examples (lower is better)
        # val_loss rows in the same file and format as training rows; fit gives it the run's tokens per step
        self.log = JsonlLogCallback(log_path, [])
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.evaluations_without_improvement = 0
        self.last_evaluated_step: int | None = None
        self.stopped_early = False

    @classmethod
    def from_config(cls, config: RunConfig, val_examples: list, pad_token_id: int, run_dir: Path,
                    loss_fn: Callable[[object, list], float] | None = None) -> EarlyStopping | None:
        """The callback for a run, or None when train.early_stopping is off.

        ``val_examples`` are the encoded val rows; ``loss_fn(model, val_examples)`` takes their loss, by
        default ``validation_loss`` (causal LM, ``val_examples`` as ``Encoded``).
        """
        if config.train.early_stopping is None:
            return None
        if not val_examples:
            raise TunelabError("train.early_stopping needs validation examples, but the val split is empty; set "
                               "data.val_fraction above 0 or give data.val")
        if loss_fn is None:
            loss_fn = causal_lm_validation_loss(config, pad_token_id)
        return cls(config.train.early_stopping, lambda model: loss_fn(model, val_examples),
                   RunFolder(run_dir).train_log_path)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.settings.eval_steps:
            return
        self._evaluate(args, state, control, model)
        if self.evaluations_without_improvement >= self.settings.patience and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_early = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.last_evaluated_step != state.global_step:
            self._evaluate(args, state, control, model)  # the final weights may be the best
        if self.best_weights is not None:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.best_weights:
                        param.copy_(self.best_weights[name])

    def summary(self) -> dict:
        """For metrics["train"]."""
        return {"best_val_loss": round(self.best_loss, 6), "best_step": self.best_step,
                "stopped_early": self.stopped_early}

    def _evaluate(self, args, state, control, model) -> None:
        loss = eagerly(self.val_loss, model)
        self.last_evaluated_step = state.global_step
        state.log_history.append({"val_loss": loss, "step": state.global_step})
        self.log.on_log(args, state, control, logs={"val_loss": loss})
        if loss < self.best_loss - self.settings.min_delta:
            self.best_loss, self.best_step = loss, state.global_step
            self.evaluations_without_improvement = 0
            self.best_weights = {name: param.detach().to("cpu", copy=True)
                                 for name, param in model.named_parameters() if param.requires_grad}
        else:
            self.evaluations_without_improvement += 1
