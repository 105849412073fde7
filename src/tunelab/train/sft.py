"""Supervised fine-tuning recipe: setup -> train -> evaluate (base vs tuned) -> save and report.

Reads top to bottom. Records become chat messages rendered by the model's own chat template; loss
is taken on assistant answers only; examples are packed with block-causal masks; the frozen base
runs in bf16 where the hardware supports it while adapters and optimizer state stay fp32.
"""

from __future__ import annotations

import random

from tunelab.config import RunConfig
from tunelab.data.dataset import Splits
from tunelab.data.templates import encode_chat
from tunelab.errors import TunelabError
from tunelab.eval.by_source import add_metrics_by_source
from tunelab.eval.suite import build_eval_task, evaluate_arms, label_choices, prediction_rows, to_messages
from tunelab.train.common import finish_run, fit
from tunelab.train.early_stopping import EarlyStopping
from tunelab.train.setup import cap_examples, load_base, start_run, with_method, write_data_summary


def encode_train(tokenizer, splits: Splits, choices, config: RunConfig):
    examples = [encode_chat(tokenizer, to_messages(r, choices, config.data.label_prompt, config.data.system_prompt),
                            config.train.max_length) for r in splits.train]
    examples = [e for e in examples if e.loss_tokens > 0]
    if not examples:
        raise TunelabError(f"no training example has an answer inside train.max_length={config.train.max_length}")
    random.Random(config.train.seed).shuffle(examples)
    return examples


def run_sft(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    # ---- setup
    run = start_run(config, resume, overwrite, kinds=("chat", "labeled"),
                    hint="raw text has no answers to learn from; use task: pretrain")
    splits, tokenizer = run.splits, run.tokenizer
    choices = label_choices(splits.train, splits.kind)
    data_summary = write_data_summary(run.run_dir, splits, labels=choices)
    examples = encode_train(tokenizer, splits, choices, config)
    test, val = cap_examples(splits.test, config), cap_examples(splits.val, config)
    eval_task = build_eval_task(tokenizer, test, val, splits.kind, choices, config.data.label_prompt,
                                config.data.system_prompt, config.train.max_length)
    # eval_task.heldout is the encoded val split when there is one (else the test split: never stop on test)
    stopper = EarlyStopping.from_config(config, eval_task.heldout if val else [], tokenizer.pad_token_id, run.run_dir)
    model, counts = with_method(run.model, config)

    # ---- train
    train_metrics = fit(model, tokenizer, examples, config, run.run_dir, resume,
                        [*callbacks, stopper] if stopper else callbacks) | {"examples": len(examples), **counts}
    if stopper:
        train_metrics |= stopper.summary()

    # ---- evaluate: the base model (adapters disabled) and the tuned model, same prompts, same examples
    metrics, arms = evaluate_arms(model, tokenizer, eval_task, config, lambda: load_base(config)[1])
    if splits.mixing:  # data.mix: every metric per source too
        add_metrics_by_source(metrics, arms, model, tokenizer, eval_task, test, val or test, config,
                              lambda: load_base(config)[1])

    # ---- save and report
    return finish_run(run.run_dir, metrics | {"train": train_metrics, "data": data_summary},
                      prediction_rows(eval_task, arms))

