"""Metrics per data source for runs trained on data.mix, next to the overall metrics.

The overall evaluation has already scored or generated every test example for both arms; those
predictions are regrouped by source rather than produced again. Held-out loss is taken per source,
for both arms, on that source's held-out examples. Results go to ``metrics[arm]["by_source"][name]``.
Every task that trains on a mix reports through here (classification regroups its probabilities the
same way in eval/classifier.py).
"""

from __future__ import annotations

from collections.abc import Callable

from tunelab.data.mixing import source_of
from tunelab.data.records import Record
from tunelab.eval.metrics import label_arm, text_metrics
from tunelab.eval.suite import EvalTask


def prediction_metrics(task: EvalTask, predictions: list[dict], indices: list[int]) -> dict:
    """The overall evaluation's metrics, computed on the test examples at ``indices`` only."""
    if not indices:
        return {}
    references = [task.references[i] for i in indices]
    picked = [predictions[i] for i in indices]
    if task.choices:
        return label_arm([p["prediction"] for p in picked], [p["confidence"] for p in picked], references,
                         task.choices)[0]
    return text_metrics(references, [p["prediction"] for p in picked])


def add_metrics_by_source(metrics: dict, arms: dict[str, list[dict]], task: EvalTask, test: list[Record],
                          heldout: list[Record], heldout_loss: Callable[[list[Record]], dict[str, dict]]) -> dict:
    """Add ``by_source`` to each arm of ``metrics``.

    ``test`` are the records behind ``task``'s prompts (in order); ``heldout`` the records its held-out
    loss was taken on. ``arms`` holds each arm's predictions from ``evaluate_arms``, and
    ``heldout_loss(records)`` gives each arm's held-out loss metrics on some of those records
    (``{arm: {"loss": ..., "perplexity": ...}}``, empty when they encode to nothing).
    """
    names = list(dict.fromkeys(source_of(r) for r in heldout + test))
    for name in names:
        indices = [i for i, record in enumerate(test) if source_of(record) == name]
        loss_metrics = heldout_loss([r for r in heldout if source_of(r) == name])
        for arm in arms:
            by_source = metrics[arm].setdefault("by_source", {})
            by_source[name] = prediction_metrics(task, arms.get(arm, []), indices) | loss_metrics.get(arm, {})
    return metrics
