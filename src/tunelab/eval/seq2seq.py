"""One encoder-decoder arm: each label scored as the whole target, or greedy generation, plus held-out loss.

The seq2seq recipe, ``tunelab eval`` and ensembles score encoder-decoder models through these, so a run
is evaluated afterwards exactly as its training evaluated it.
"""

from __future__ import annotations

from tunelab.config import RunConfig
from tunelab.data.pairs import Pair, encode_pairs, record_pairs
from tunelab.data.records import Record
from tunelab.eval.metrics import perplexity, text_metrics
from tunelab.eval.suite import EvalTask, EvaluateArm, label_results
from tunelab.inference.seq2seq import generate_targets, heldout_target_nll, score_targets
from tunelab.modeling.precision import autocast_like


def pairs_of(records: list[Record], choices: list[str] | None, config: RunConfig) -> list[Pair]:
    return record_pairs(records, choices, config.data.label_prompt, config.data.system_prompt)


def evaluate_seq2seq(model, tokenizer, task: EvalTask, config: RunConfig, arm: str) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions ({prediction, correct, confidence}) for one model."""
    batch_size, max_length = config.eval.batch_size, config.train.max_length
    metrics: dict = {}
    predictions: list[dict] = []
    model.eval()
    with autocast_like(model):
        if task.choices:
            scores = score_targets(model, tokenizer, task.prompts, task.choices, batch_size, max_length,
                                   desc=f"{arm}: scoring")
            label_scores, predictions = label_results(scores, task.choices, task.references)
            metrics.update(label_scores)
        elif task.prompts:
            outputs = generate_targets(model, tokenizer, task.prompts, config.eval.max_new_tokens, batch_size,
                                       max_length, desc=f"{arm}: generating")
            metrics.update(text_metrics(task.references, outputs))
            predictions = [{"prediction": o, "correct": None} for o in outputs]
        if task.heldout:
            nll, tokens = heldout_target_nll(model, tokenizer, task.heldout, batch_size, desc=f"{arm}: held-out loss")
            metrics["loss"] = nll / max(tokens, 1)
            metrics["perplexity"] = perplexity(nll, tokens)
    return metrics, predictions


def seq2seq_eval_task(tokenizer, test: list[Record], heldout: list[Record], kind: str, choices: list[str] | None,
              config: RunConfig) -> EvalTask:
    """What both arms are evaluated on: the test pairs' sources and targets, and held-out target loss."""
    shown = pairs_of(test, choices, config)
    encoded = encode_pairs(tokenizer, pairs_of(heldout, choices, config), config.train.max_length)
    return EvalTask(kind, [p.shown for p in shown], [p.source for p in shown], [p.target for p in shown], choices,
                    [e for e in encoded if e.labels], list(test))


def seq2seq_arm(tokenizer, task: EvalTask, config: RunConfig) -> EvaluateArm:
    """``evaluate`` for evaluate_arms: an encoder-decoder scored on ``task`` with the run's eval settings."""
    def evaluate(model, arm: str) -> tuple[dict, list[dict]]:
        return evaluate_seq2seq(model, tokenizer, task, config, arm)
    return evaluate
