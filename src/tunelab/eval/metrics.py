"""Metrics for comparing a base and a tuned model: pure functions over strings and numbers.

Every function returns plain Python floats so results go straight into ``metrics.json``.
Arguments are always ``(references, predictions)``, in that order.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def _check_pairs(first: list, second: list) -> None:
    """Mismatched or empty inputs would silently give meaningless averages, so refuse them."""
    if len(first) != len(second):
        raise ValueError(
            f"lengths differ ({len(first)} vs {len(second)}): score the same examples on both sides"
        )
    if not first:
        raise ValueError("no examples to score")


def label_metrics(
    references: list[str], predictions: list[str], labels: list[str] | None = None
) -> dict:
    """Accuracy, macro precision/recall/F1 and a confusion matrix for classification.

    ``labels`` fixes the order of the matrix; by default it is every label seen on either side,
    sorted, so a prediction outside the label set still shows up as its own column.
    """
    _check_pairs(references, predictions)
    labels = labels if labels is not None else sorted(set(references) | set(predictions))
    precision, recall, f1, _ = precision_recall_fscore_support(
        references, predictions, labels=labels, average="macro", zero_division=0
    )
    matrix = confusion_matrix(references, predictions, labels=labels)
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": {"labels": list(labels), "matrix": matrix.tolist()},
    }


def expected_calibration_error(
    confidences: list[float], correct: list[bool], n_bins: int = 10
) -> float:
    """How far stated confidence is from observed accuracy, averaged over equal-width bins.

    Each bin contributes |accuracy - mean confidence| weighted by its share of the examples.
    A confidence of exactly 1.0 falls in the last bin.
    """
    _check_pairs(confidences, correct)
    conf = np.asarray(confidences, dtype=float)
    hits = np.asarray(correct, dtype=float)
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(hits[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalization, so "The Cat!" and "cat" count as the same answer."""
    s = s.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(references: list[str], predictions: list[str]) -> float:
    """Share of predictions equal to their reference after normalization."""
    _check_pairs(references, predictions)
    hits = [normalize_answer(r) == normalize_answer(p) for r, p in zip(references, predictions)]
    return sum(hits) / len(hits)


def token_f1(reference: str, prediction: str) -> float:
    ref_tokens = normalize_answer(reference).split()
    pred_tokens = normalize_answer(prediction).split()
    if not ref_tokens or not pred_tokens:
        # SQuAD v2 rule: an empty answer is right only against an empty reference.
        return float(ref_tokens == pred_tokens)
    overlap = sum((Counter(ref_tokens) & Counter(pred_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(references: list[str], predictions: list[str]) -> float:
    """Token-overlap F1 (SQuAD style), averaged over examples; gives partial credit."""
    _check_pairs(references, predictions)
    return sum(token_f1(r, p) for r, p in zip(references, predictions)) / len(references)


def rouge_l(references: list[str], predictions: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence, stemmed), the usual summary metric."""
    _check_pairs(references, predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
    return float(sum(scores) / len(scores))


def bleu(references: list[str], predictions: list[str]) -> float:
    """Corpus BLEU (sacrebleu) scaled to 0..1 to sit beside the other metrics.

    Without 4-grams in the corpus (very short outputs) BLEU is 0 by definition.
    """
    _check_pairs(references, predictions)
    score = sacrebleu.corpus_bleu(predictions, [references]).score / 100
    return min(1.0, float(score))  # sacrebleu can return 100.00000000000004


def item_scores(metric: str, references: list[str], predictions: list[str]) -> list[float]:
    """Each example's own score under ``metric`` (accuracy and exact_match: 0 or 1; f1; rouge_l), the
    per-item results that paired comparisons of two models need."""
    _check_pairs(references, predictions)
    if metric in ("accuracy", "exact_match"):
        return [float(normalize_answer(r) == normalize_answer(p)) for r, p in zip(references, predictions)]
    if metric == "f1":
        return [token_f1(r, p) for r, p in zip(references, predictions)]
    if metric == "rouge_l":
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        return [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
    raise ValueError(f"no per-item score for {metric!r}; choose accuracy, exact_match, f1 or rouge_l")


def text_metrics(references: list[str], predictions: list[str]) -> dict:
    """All generation metrics at once, for tasks whose outputs are free text."""
    return {
        "exact_match": exact_match(references, predictions),
        "f1": f1(references, predictions),
        "rouge_l": rouge_l(references, predictions),
        "bleu": bleu(references, predictions),
    }


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per token); inf when the model is hopeless."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def label_arm(predicted: list[str], confidence: list[float], references: list[str], labels: list[str],
              ) -> tuple[dict, list[dict]]:
    """Label metrics and calibration of one model's answers, and its per-example predictions.

    Every label evaluation (a causal LM's scored labels, a classifier's head, an ensemble, a source
    of a data mix) ends here, so their metrics mean the same thing.
    """
    correct = [p == r for p, r in zip(predicted, references)]
    metrics = label_metrics(references, predicted, labels)
    metrics["ece"] = expected_calibration_error(confidence, correct)
    predictions = [{"prediction": p, "correct": c, "confidence": round(conf, 4)}
                   for p, c, conf in zip(predicted, correct, confidence)]
    return metrics, predictions
