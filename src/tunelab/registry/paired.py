"""Paired tests between two recorded runs: is the difference on the held-out items both answered real?

Two runs evaluated on the same items are compared item by item, with the statistics of the promotion
gate (``stats.py``): an exact McNemar test where each item is right or wrong (accuracy, exact match),
a paired bootstrap of the mean difference where each item has a score (token F1, ROUGE-L). Corpus-level
metrics (BLEU, perplexity) have no per-item value and get no test.

The result reads as one sentence ("wider-lora is better than baseline-lora by +0.17 [+0.02, +0.31],
p=0.03 on 24 shared items"), so a table of numbers is never the only way to tell what a comparison says.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from tunelab.eval.metrics import item_scores
from tunelab.registry.ingest import tuned_key
from tunelab.registry.queries import items_of, latest_evaluation
from tunelab.registry.schema import EvalItem, Run
from tunelab.registry.stats import PairedResult, mcnemar_exact, paired_bootstrap

LABEL_METRICS = ("accuracy", "exact_match")  # right or wrong per item: exact McNemar test
SCORE_METRICS = ("f1", "rouge_l")  # a score per item: paired bootstrap of the mean difference
TESTABLE_METRICS = LABEL_METRICS + SCORE_METRICS


def tuned_items(session: Session, run: Run) -> dict[str, EvalItem]:
    """The run's tuned model's per-item results by item hash (empty when it was never evaluated)."""
    evaluation = latest_evaluation(session, tuned_key(run.id), arm="tuned")
    return {} if evaluation is None else items_of(session, evaluation)


def scores_on(metric: str, items: dict[str, EvalItem], shared: list[str],
              references: dict[str, str] | None) -> list[float] | None:
    """Each shared item's score under ``metric``: as stored when the stored value is that metric, else
    recomputed from the prediction and the reference; None when neither is possible."""
    stored = [items[h] for h in shared]
    if metric in LABEL_METRICS and all(item.correct is not None for item in stored):
        return [float(item.correct) for item in stored]
    if metric == "f1" and all(item.correct is None and item.score is not None for item in stored):
        return [float(item.score) for item in stored]  # free text: the stored score is token F1
    if references is None or any(h not in references for h in shared):
        return None
    return item_scores(metric, [str(references[h]) for h in shared], [item.prediction or "" for item in stored])


def paired_test(metric: str, holder: dict[str, EvalItem], challenger: dict[str, EvalItem],
                references: dict[str, str] | None = None, confidence: float = 0.95) -> PairedResult | None:
    """``challenger`` minus ``holder`` on ``metric`` over the items both answered, or None when the metric
    has no per-item value or the two share no item. ``references`` (item -> reference answer) is needed
    only where a score must be recomputed."""
    shared = [h for h in holder if h in challenger]
    if metric not in TESTABLE_METRICS or not shared:
        return None
    ours = scores_on(metric, challenger, shared, references)
    theirs = scores_on(metric, holder, shared, references)
    if ours is None or theirs is None:
        return None
    if metric in LABEL_METRICS:
        return mcnemar_exact([x == 1.0 for x in ours], [x == 1.0 for x in theirs], metric=metric,
                             confidence=confidence)
    return paired_bootstrap(ours, theirs, metric=metric, confidence=confidence)


def verdict(result: PairedResult) -> str:
    """"better" or "worse" when the whole interval lies on one side of 0, else "unclear"."""
    if result.low > 0:
        return "better"
    if result.high < 0:
        return "worse"
    return "unclear"


def decimals(result: PairedResult) -> int:
    """Enough decimals that the difference shows two significant digits (2 for +0.17, 4 for +0.0031)."""
    size = abs(result.delta) or max(abs(result.low), abs(result.high))
    return 2 if size >= 0.1 or size == 0 else 3 if size >= 0.01 else 4


def format_p(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.2g}"


def numbers(result: PairedResult) -> str:
    """'+0.17 [+0.02, +0.31], p=0.03 on 24 shared items'."""
    digits = decimals(result)

    def show(value: float) -> str:
        return f"{round(value, digits) + 0.0:+.{digits}f}"

    return f"{show(result.delta)} [{show(result.low)}, {show(result.high)}], {format_p(result.p_value)} " \
           f"on {result.n} shared item{'' if result.n == 1 else 's'}"


def in_words(result: PairedResult, challenger: str, holder: str) -> str:
    """The comparison as one sentence a reader can act on."""
    said = numbers(result)
    if verdict(result) == "better":
        return f"{challenger} is better than {holder} by {said}."
    if verdict(result) == "worse":
        return f"{challenger} is worse than {holder} by {said}."
    if result.delta == 0:
        return f"{challenger} and {holder} score the same: {said}."
    side = "ahead of" if result.delta > 0 else "behind"
    return (f"{challenger} is {side} {holder} by {said}: not a clear difference "
            f"(the {result.confidence:.0%} interval includes 0; more items would tell).")
