import json
import math

import pytest

from tunelab.eval.metrics import (
    bleu,
    exact_match,
    expected_calibration_error,
    f1,
    label_metrics,
    normalize_answer,
    perplexity,
    rouge_l,
    text_metrics,
)


def test_label_metrics_hand_computed():
    refs = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", "b", "a"]
    m = label_metrics(refs, preds)
    # Per class: a P=1/2 R=1/2 F=1/2; b P=2/3 R=1 F=4/5; c never predicted -> 0 (zero_division).
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["f1"] == pytest.approx((1 / 2 + 4 / 5 + 0) / 3)
    assert m["confusion_matrix"] == {
        "labels": ["a", "b", "c"],
        "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 0]],
    }
    json.dumps(m)  # plain Python types only


def test_label_metrics_explicit_labels_fix_matrix_order():
    m = label_metrics(["pos", "neg"], ["pos", "pos"], labels=["pos", "neg"])
    assert m["confusion_matrix"] == {"labels": ["pos", "neg"], "matrix": [[1, 0], [1, 0]]}
    assert m["accuracy"] == 0.5
    assert type(m["accuracy"]) is float


def test_label_metrics_perfect():
    m = label_metrics(["x", "y"], ["x", "y"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0, 1.0)


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="lengths differ"):
        label_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no examples"):
        exact_match([], [])


def test_ece_constructed_case():
    # Bin 0.9: 4 examples, accuracy 0.75 -> gap 0.15, weight 4/6.
    # Bin 0.3: 2 examples, accuracy 0.5 -> gap 0.2, weight 2/6.
    conf = [0.9, 0.9, 0.9, 0.9, 0.3, 0.3]
    correct = [True, True, True, False, True, False]
    assert expected_calibration_error(conf, correct) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.2)


def test_ece_calibrated_and_confident_edges():
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 1.0], [False, False]) == pytest.approx(1.0)


def test_normalize_answer_squad_style():
    assert normalize_answer("  The Cat,  sat on a MAT! ") == "cat sat on mat"
    assert normalize_answer("An apple") == "apple"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


REFERENCE = "the quick brown fox jumps over the lazy dog near the river bank"


@pytest.mark.parametrize("metric", [exact_match, f1, rouge_l, bleu])
def test_text_metric_perfect_and_zero(metric):
    assert metric([REFERENCE], [REFERENCE]) == pytest.approx(1.0)
    assert metric([REFERENCE], ["completely unrelated words appear here instead"]) == 0.0


def test_token_f1_partial_credit_and_exact_match_normalizes():
    # Normalized: ref [cat, sat, on, mat], pred [cat, on, mat] -> P=1, R=3/4.
    assert f1(["The cat sat on the mat."], ["cat on mat"]) == pytest.approx(2 * 0.75 / 1.75)
    assert exact_match(["The Cat!", "dog"], ["cat", "cats"]) == 0.5
    assert f1([""], [""]) == 1.0
    assert f1(["something"], [""]) == 0.0


def test_bleu_and_rouge_partial_lie_strictly_between_zero_and_one():
    refs = [REFERENCE, "a model that was tuned on the data answers better than the base"]
    preds = ["the quick brown fox jumps over a lazy cat", "a tuned model answers better"]
    for value in (bleu(refs, preds), rouge_l(refs, preds)):
        assert 0.0 < value < 1.0


def test_rouge_l_uses_stemming():
    assert rouge_l(["cats running"], ["cat run"]) == pytest.approx(1.0)


def test_text_metrics_keys_and_types():
    m = text_metrics([REFERENCE], [REFERENCE])
    assert set(m) == {"exact_match", "f1", "rouge_l", "bleu"}
    assert all(type(v) is float for v in m.values())
    assert m == pytest.approx({"exact_match": 1.0, "f1": 1.0, "rouge_l": 1.0, "bleu": 1.0})


def test_perplexity():
    assert perplexity(5 * math.log(10), 5) == pytest.approx(10.0)
    assert perplexity(0.0, 3) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
