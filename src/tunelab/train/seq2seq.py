"""Sequence-to-sequence recipe for encoder-decoder models (T5, BART): setup -> train -> evaluate -> report.

Every record becomes one pair of plain texts. A chat record's source is the conversation before its
last assistant turn and its target is that turn; a text/label row's source is the label prompt and its
target is the label. The encoder reads the source and the decoder learns the target, teacher-forced,
with the loss on every target token (end token included) summed and divided by the target tokens of
the whole accumulated batch. Base and tuned models are compared on the same test pairs: each label
scored as the target (probabilities, calibration) when answers come from a small set, greedy
generation and text metrics otherwise, and teacher-forced held-out loss either way. Every method
applies: peft's adapters (lora, dora, rslora, qlora on a 4-bit base, ia3), its virtual tokens (prefix
tuning in every attention layer, prompt tuning before the encoder's input), and freeze, which trains
the last decoder blocks. ``train.early_stopping`` stops on the teacher-forced target loss of the val
split, and with ``data.mix`` every metric is reported per source as well.
"""

from __future__ import annotations

import random

import torch

from tunelab.config import RunConfig
from tunelab.data.pairs import as_feature, encode_pairs
from tunelab.data.records import Record
from tunelab.data.templates import label_choices
from tunelab.errors import TunelabError
from tunelab.eval.by_source import add_metrics_by_source
from tunelab.eval.seq2seq import pairs_of, seq2seq_arm, seq2seq_eval_task
from tunelab.eval.suite import evaluate_arms
from tunelab.inference.seq2seq import collator, heldout_target_nll, target_loss_sum
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.load import load_seq2seq
from tunelab.modeling.precision import autocast_like
from tunelab.train.early_stopping import EarlyStopping
from tunelab.train.fit import AnswerLossTrainer, finish_run, fit_padded
from tunelab.train.setup import cap_examples, start_run, with_method, write_data_summary
from tunelab.train.validation_curve import ValidationCurve


def validation_loss(model, tokenizer, examples, batch_size: int) -> float:
    """Mean target loss per target token on encoded val pairs, in eval mode; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with autocast_like(model):
            total, tokens = heldout_target_nll(model, tokenizer, examples, batch_size, desc="val loss")
    finally:
        model.train(was_training)
    return total / max(tokens, 1)


# ---- the recipe

def run_seq2seq(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    # ---- setup
    run = start_run(config, resume, overwrite, kinds=("chat", "labeled"),
                    load=lambda config, splits: load_seq2seq(config),
                    hint="task: seq2seq learns a target from a source: give prompt/completion, chat or text/label "
                         "rows (raw text has no target; use task: pretrain)")
    splits, tokenizer, length = run.splits, run.tokenizer, config.train.max_length
    choices = label_choices(splits.train, splits.kind)
    data_summary = write_data_summary(run.folder, splits, labels=choices)
    examples = [e for e in encode_pairs(tokenizer, pairs_of(splits.train, choices, config), length) if e.labels]
    if not examples:
        raise TunelabError("no training example has a non-empty target")
    random.Random(config.train.seed).shuffle(examples)
    test, heldout = cap_examples(splits.test, config), cap_examples(splits.val or splits.test, config)
    task = seq2seq_eval_task(tokenizer, test, heldout, splits.kind, choices, config)
    val = [e for e in encode_pairs(tokenizer, pairs_of(cap_examples(splits.val, config), choices, config), length)
           if e.labels]

    def val_loss(model, val):  # teacher-forced target loss per target token
        return validation_loss(model, tokenizer, val, config.eval.batch_size)

    stopper = EarlyStopping.from_config(config, val, tokenizer.pad_token_id, run.run_dir, val_loss)
    curve = ValidationCurve.from_config(config, val, tokenizer.pad_token_id, run.run_dir, val_loss)
    model, counts = with_method(run.model, config, task_type="SEQ_2_SEQ_LM")
    for param in model.parameters():  # a bf16 base still trains its adapters in fp32
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()

    # ---- train, then save the adapter (or the whole model) with its tokenizer
    train_metrics = fit_padded(model, tokenizer, [as_feature(e) for e in examples], collator(tokenizer, model),
                               AnswerLossTrainer, target_loss_sum, config, run.folder, resume,
                               [*callbacks, *(c for c in (stopper, curve) if c)]) | counts
    if stopper:  # the best weights are back in the model
        train_metrics |= stopper.summary()

    # ---- evaluate: base and tuned on the same test pairs; per source too with data.mix
    def evaluate_on(task):
        return evaluate_arms(model, seq2seq_arm(tokenizer, task, config), config.eval.baseline,
                             lambda: prepare_for_inference(load_seq2seq(config)[1], config))

    metrics, arms = evaluate_on(task)
    if splits.mixing:
        def heldout_loss(records: list[Record]) -> dict:
            loss_task = seq2seq_eval_task(tokenizer, [], records, splits.kind, None, config)  # held-out loss only
            return evaluate_on(loss_task)[0] if loss_task.heldout else {}

        add_metrics_by_source(metrics, arms, task, test, heldout, heldout_loss)

    # ---- report
    return finish_run(run.folder, metrics | {"train": train_metrics, "data": data_summary}, task, arms)
