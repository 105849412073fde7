"""Continued-pretraining recipe: raw text, every token trained; judged by held-out perplexity.

Documents are tokenized, cut into chunks of ``train.max_length`` tokens and packed like SFT
examples (each chunk keeps its own positions and mask). The base and tuned models are compared on
the perplexity of held-out documents.
"""

from __future__ import annotations

import random

from tunelab.config import RunConfig
from tunelab.data.templates import encode_text
from tunelab.eval.forgetting import ForgettingCheck
from tunelab.eval.suite import build_eval_task
from tunelab.train.early_stopping import EarlyStopping
from tunelab.train.fit import finish_run, fit
from tunelab.train.setup import cap_examples, start_run, with_method, write_data_summary
from tunelab.train.sft import evaluate_base_and_tuned
from tunelab.train.validation_curve import ValidationCurve


def run_pretrain(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    # ---- setup
    forgetting = ForgettingCheck.from_config(config)  # general-text perplexity before vs after; None when off
    run = start_run(config, resume, overwrite, kinds=("text",),
                    hint='continued pretraining reads raw text rows ({"text": ...}); use task: sft for answers')
    tokenizer, length, seed = run.tokenizer, config.train.max_length, config.train.seed
    data_summary = write_data_summary(run.folder, run.splits)
    chunks = [c for r in run.splits.train for c in encode_text(tokenizer, r.text, length)]
    random.Random(seed).shuffle(chunks)
    heldout = cap_examples(run.splits.test or run.splits.val, config)
    eval_task = build_eval_task(tokenizer, [], heldout, "text", None, config.data.label_prompt, None, length)
    val_chunks = [c for r in run.splits.val for c in encode_text(tokenizer, r.text, length)]
    stopper = EarlyStopping.from_config(config, val_chunks, tokenizer.pad_token_id, run.run_dir)
    curve = ValidationCurve.from_config(config, val_chunks, tokenizer.pad_token_id, run.run_dir)
    if forgetting:
        forgetting.measure_base(run.model, tokenizer)
    model, counts = with_method(run.model, config)

    # ---- train
    train_metrics = fit(model, tokenizer, chunks, config, run.folder, resume,
                        [*callbacks, *(c for c in (stopper, curve) if c)]) | {"chunks": len(chunks), **counts}
    if stopper:
        train_metrics |= stopper.summary()

    # ---- evaluate: held-out perplexity, base (adapters disabled) vs tuned
    metrics, arms = evaluate_base_and_tuned(model, tokenizer, eval_task, [], heldout, config, run.splits.mixing)
    if forgetting:
        metrics["forgetting"] = forgetting.compare(model, tokenizer)

    # ---- save and report
    return finish_run(run.folder, metrics | {"train": train_metrics, "data": data_summary})
