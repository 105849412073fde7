"""One classification arm: a head's probabilities on the test texts, turned into label metrics.

With ``sources`` (``data.mix``: each example's source) every metric is reported per source as well,
under ``by_source``, from the same probabilities.
"""

from __future__ import annotations

import numpy as np

from tunelab.eval.metrics import label_arm
from tunelab.inference.classifier import mean_loss, predict_probabilities


def probability_metrics(probs: np.ndarray, reference_ids: np.ndarray, labels: list[str]) -> tuple[dict, list[dict]]:
    """Label metrics, calibration and loss of predicted ``probs``, and the per-example predictions."""
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    metrics, predictions = label_arm(predicted, probs.max(axis=1).tolist(), [labels[i] for i in reference_ids],
                                     labels)
    metrics["loss"] = mean_loss(probs, reference_ids)
    return metrics, predictions


def arm_metrics(probs: np.ndarray, reference_ids: np.ndarray, labels: list[str],
                sources: list[str] | None = None) -> tuple[dict, list[dict]]:
    """``probability_metrics``, and with ``sources`` the same per source as ``by_source``."""
    metrics, predictions = probability_metrics(probs, reference_ids, labels)
    if sources:
        metrics["by_source"] = {}
        for name in dict.fromkeys(sources):
            picked = np.array([i for i, source in enumerate(sources) if source == name])
            metrics["by_source"][name] = probability_metrics(probs[picked], reference_ids[picked], labels)[0]
    return metrics, predictions


def evaluate_classifier(model, tokenizer, features: list[dict], labels: list[str], batch_size: int,
                        sources: list[str] | None = None) -> tuple[dict, list[dict]]:
    """Label metrics, calibration and held-out loss for one arm, and its per-example predictions."""
    probs = predict_probabilities(model, tokenizer, features, batch_size)
    return arm_metrics(probs, np.array([f["labels"] for f in features]), labels, sources)
