"""Paired tests between two runs' per-item results (registry/paired.py): which test, on which items, in which words."""

from __future__ import annotations

import pytest

from tunelab.registry.paired import in_words, numbers, paired_test, verdict
from tunelab.registry.schema import EvalItem
from tunelab.registry.stats import PairedResult, mcnemar_exact, paired_bootstrap


def labelled(right: list[bool]) -> dict[str, EvalItem]:
    return {f"item{i}": EvalItem(item_hash=f"item{i}", prediction="x", correct=r, score=float(r))
            for i, r in enumerate(right)}


def scored(scores: list[float]) -> dict[str, EvalItem]:
    return {f"item{i}": EvalItem(item_hash=f"item{i}", prediction="x", correct=None, score=s)
            for i, s in enumerate(scores)}


def result(delta: float, low: float, high: float, p: float = 0.03, n: int = 24) -> PairedResult:
    return PairedResult("accuracy", "mcnemar-exact", n, 0.5 + delta, 0.5, delta, low, high, p)


def test_accuracy_is_mcnemar_on_the_shared_items_only():
    holder = labelled([True, True, False, False, True])
    challenger = labelled([True, False, True, True])  # item4 was not answered: left out
    got = paired_test("accuracy", holder, challenger)
    assert got == mcnemar_exact([True, False, True, True], [True, True, False, False], metric="accuracy")
    assert got.n == 4 and got.challenger_only == 2 and got.holder_only == 1


def test_free_text_f1_is_a_paired_bootstrap_of_the_stored_scores():
    got = paired_test("f1", scored([0.2, 0.5, 0.1, 0.9]), scored([0.4, 0.5, 0.6, 0.9]))
    assert got == paired_bootstrap([0.4, 0.5, 0.6, 0.9], [0.2, 0.5, 0.1, 0.9], metric="f1")


def test_rouge_is_recomputed_from_the_references_or_skipped():
    holder, challenger = scored([0.0, 0.0]), scored([0.0, 0.0])
    holder["item0"].prediction, challenger["item0"].prediction = "the cat", "the cat sat"
    assert paired_test("rouge_l", holder, challenger) is None  # no references to score against
    got = paired_test("rouge_l", holder, challenger, {"item0": "the cat sat", "item1": "x"})
    assert got.method == "paired-bootstrap" and got.delta > 0


def test_no_test_for_corpus_metrics_or_disjoint_items():
    assert paired_test("bleu", labelled([True]), labelled([False])) is None
    assert paired_test("accuracy", labelled([True]), {"other": EvalItem(item_hash="other", correct=True)}) is None


@pytest.mark.parametrize("delta, low, high, words", [
    (0.17, 0.02, 0.31, "b is better than a by +0.17 [+0.02, +0.31], p=0.03 on 24 shared items."),
    (-0.17, -0.31, -0.02, "b is worse than a by -0.17 [-0.31, -0.02], p=0.03 on 24 shared items."),
    (0.17, -0.11, 0.41, "b is ahead of a by +0.17 [-0.11, +0.41], p=0.03 on 24 shared items: not a clear difference"),
    (0.0, -0.1, 0.1, "b and a score the same: +0.00 [-0.10, +0.10]"),
])
def test_in_words(delta, low, high, words):
    assert in_words(result(delta, low, high), "b", "a").startswith(words)


def test_small_differences_keep_two_significant_digits():
    assert numbers(result(0.0031, 0.0012, 0.0052, p=0.0004, n=5000)) == \
        "+0.0031 [+0.0012, +0.0052], p<0.001 on 5000 shared items"
    assert verdict(result(0.0031, 0.0012, 0.0052)) == "better"
