"""Supervised fine-tuning recipe: setup -> train -> evaluate (base vs tuned) -> save and report.

Reads top to bottom. Records become chat messages rendered by the model's own chat template; loss
is taken on assistant answers only; examples are packed with block-causal masks; the frozen base
runs in bf16 where the hardware supports it while adapters and optimizer state stay fp32.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.data.dataset import Splits
from tunelab.data.records import Record
from tunelab.data.templates import encode_chat, label_choices, to_messages
from tunelab.errors import TunelabError
from tunelab.eval.by_source import add_metrics_by_source
from tunelab.eval.suite import EvalTask, build_eval_task, causal_lm_arm, evaluate_arms
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.load import load_causal_lm
from tunelab.train.early_stopping import EarlyStopping
from tunelab.train.fit import finish_run, fit
from tunelab.train.setup import Started, cap_examples, start_run, with_method, write_data_summary
from tunelab.train.validation_curve import ValidationCurve


def encode_train(tokenizer, splits: Splits, choices, config: RunConfig):
    examples = [encode_chat(tokenizer, to_messages(r, choices, config.data.label_prompt, config.data.system_prompt),
                            config.train.max_length) for r in splits.train]
    examples = [e for e in examples if e.loss_tokens > 0]
    if not examples:
        raise TunelabError(f"no training example has an answer inside train.max_length={config.train.max_length}")
    random.Random(config.train.seed).shuffle(examples)
    return examples


@dataclass
class AnswerData:
    """What a recipe that trains on answers (sft, distill) prepares from its run's splits."""

    data_summary: dict
    examples: list  # encoded, shuffled training examples
    test: list
    val: list
    eval_task: object
    stopper: EarlyStopping | None
    curve: ValidationCurve | None  # the periodic val_loss rows, when early stopping is off

    @property
    def validation(self) -> list:
        """The validation callbacks to train with: early stopping, or the validation curve, or none."""
        return [callback for callback in (self.stopper, self.curve) if callback]


def prepare_answer_data(run: Started, config: RunConfig) -> AnswerData:
    splits, tokenizer = run.splits, run.tokenizer
    choices = label_choices(splits.train, splits.kind)
    data_summary = write_data_summary(run.folder, splits, labels=choices)
    examples = encode_train(tokenizer, splits, choices, config)
    test, val = cap_examples(splits.test, config), cap_examples(splits.val, config)
    eval_task = build_eval_task(tokenizer, test, val, splits.kind, choices, config.data.label_prompt,
                                config.data.system_prompt, config.train.max_length)
    # eval_task.heldout is the encoded val split when there is one (else the test split: never stop on test)
    heldout = eval_task.heldout if val else []
    stopper = EarlyStopping.from_config(config, heldout, tokenizer.pad_token_id, run.run_dir)
    curve = ValidationCurve.from_config(config, heldout, tokenizer.pad_token_id, run.run_dir)
    return AnswerData(data_summary, examples, test, val, eval_task, stopper, curve)


def evaluate_base_and_tuned(model, tokenizer, eval_task: EvalTask, test: list[Record], heldout: list[Record],
                            config: RunConfig, mixing: bool):
    """The base model (adapters disabled, or reloaded) and the tuned model, same prompts, same examples;
    with ``mixing`` (data.mix) every metric per source too, held-out loss on each source's ``heldout``."""
    def evaluate_on(task: EvalTask):
        return evaluate_arms(model, causal_lm_arm(tokenizer, task, config), config.eval.baseline,
                             lambda: prepare_for_inference(load_causal_lm(config)[1], config))

    metrics, arms = evaluate_on(eval_task)
    if mixing:
        def heldout_loss(records: list[Record]) -> dict:
            encoded = build_eval_task(tokenizer, [], records, eval_task.kind, eval_task.choices,
                                      config.data.label_prompt, config.data.system_prompt,
                                      config.train.max_length).heldout
            loss_task = EvalTask(eval_task.kind, [], [], [], None, encoded)  # held-out loss only
            return evaluate_on(loss_task)[0] if encoded else {}

        add_metrics_by_source(metrics, arms, eval_task, test, heldout, heldout_loss)
    return metrics, arms


def run_sft(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    # ---- setup
    run = start_run(config, resume, overwrite, kinds=("chat", "labeled"),
                    hint="raw text has no answers to learn from; use task: pretrain")
    data = prepare_answer_data(run, config)
    model, counts = with_method(run.model, config)

    # ---- train
    train_metrics = fit(model, run.tokenizer, data.examples, config, run.folder, resume,
                        [*callbacks, *data.validation])
    train_metrics |= {"examples": len(data.examples), **counts}
    if data.stopper:
        train_metrics |= data.stopper.summary()

    # ---- evaluate: the base model (adapters disabled) and the tuned model, same prompts, same examples
    metrics, arms = evaluate_base_and_tuned(model, run.tokenizer, data.eval_task, data.test, data.val or data.test,
                                            config, run.splits.mixing)

    # ---- save and report
    return finish_run(run.folder, metrics | {"train": train_metrics, "data": data.data_summary}, data.eval_task, arms)

