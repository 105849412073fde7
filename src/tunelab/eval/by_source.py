"""Metrics per data source for runs trained on data.mix, next to the overall metrics.

The overall evaluation has already scored or generated every test example for both arms; those
predictions are regrouped by source rather than produced again. Held-out loss is taken per source,
for both arms, on that source's held-out examples. Results go to ``metrics[arm]["by_source"][name]``.
"""

from __future__ import annotations

from tunelab.data.mixing import source_of
from tunelab.data.records import Record
from tunelab.eval.metrics import expected_calibration_error, label_metrics, text_metrics
from tunelab.eval.suite import EvalTask, build_eval_task, evaluate_arms


def prediction_metrics(task: EvalTask, predictions: list[dict], indices: list[int]) -> dict:
    """The overall evaluation's metrics, computed on the test examples at ``indices`` only."""
    if not indices:
        return {}
    references = [task.references[i] for i in indices]
    picked = [predictions[i] for i in indices]
    if task.choices:
        metrics = label_metrics(references, [p["prediction"] for p in picked], task.choices)
        metrics["ece"] = expected_calibration_error([p["confidence"] for p in picked], [p["correct"] for p in picked])
        return metrics
    return text_metrics(references, [p["prediction"] for p in picked])


def add_metrics_by_source(metrics: dict, arms: dict[str, list[dict]], model, tokenizer, task: EvalTask,
                          test: list[Record], heldout: list[Record], config, load_base_model) -> dict:
    """Add ``by_source`` to each arm of ``metrics``.

    ``test`` are the records behind ``task``'s prompts (in order); ``heldout`` the records its held-out
    loss was taken on. ``arms`` holds each arm's predictions from ``evaluate_arms``.
    """
    names = list(dict.fromkeys(source_of(r) for r in heldout + test))
    for name in names:
        indices = [i for i, record in enumerate(test) if source_of(record) == name]
        source_heldout = [r for r in heldout if source_of(r) == name]
        encoded = build_eval_task(tokenizer, [], source_heldout, task.kind, task.choices, config.data.label_prompt,
                                  config.data.system_prompt, config.train.max_length).heldout
        loss_task = EvalTask(task.kind, [], [], [], None, encoded)  # held-out loss only, nothing to score
        loss_metrics: dict = {}
        if encoded:
            loss_metrics, _ = evaluate_arms(model, tokenizer, loss_task, config, load_base_model)
        for arm in arms:
            by_source = metrics[arm].setdefault("by_source", {})
            by_source[name] = prediction_metrics(task, arms.get(arm, []), indices) | loss_metrics.get(arm, {})
    return metrics
