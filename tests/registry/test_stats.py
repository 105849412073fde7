"""The promotion gate's statistics, checked against independent computations and by simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from tunelab.registry.stats import (GateDecision, PairedResult, decide, mcnemar_exact, mean_interval, paired_bootstrap,
                                    proportion_interval)


def paired_labels(b: int, c: int, both: int, neither: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right/wrong vectors with the given cell counts, shuffled: b challenger-only, c holder-only."""
    challenger = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    holder = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    order = np.random.default_rng(seed).permutation(challenger.size)
    return challenger[order], holder[order]


def simulate_labels(rng, probs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired Bernoulli outcomes; probs = P(both right), P(challenger only), P(holder only), P(neither)."""
    cells = rng.choice(4, size=n, p=probs)
    return (cells == 0) | (cells == 1), (cells == 0) | (cells == 2)


# --- exact McNemar -------------------------------------------------------------------------------


def test_mcnemar_p_value_matches_the_exact_binomial_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        challenger, holder = simulate_labels(rng, (0.6, 0.12, 0.08, 0.2), int(rng.integers(20, 400)))
        result = mcnemar_exact(challenger, holder)
        b, c = result.challenger_only, result.holder_only
        expected = min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5))
        assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_mcnemar_p_value_matches_statsmodels():
    contingency = pytest.importorskip("statsmodels.stats.contingency_tables")
    rng = np.random.default_rng(2)
    for _ in range(20):
        challenger, holder = simulate_labels(rng, (0.5, 0.15, 0.1, 0.25), int(rng.integers(10, 300)))
        table = [
            [np.sum(challenger & holder), np.sum(challenger & ~holder)],
            [np.sum(~challenger & holder), np.sum(~challenger & ~holder)],
        ]
        expected = contingency.mcnemar(table, exact=True).pvalue
        assert mcnemar_exact(challenger, holder).p_value == pytest.approx(expected, rel=1e-9)


def test_mcnemar_counts_means_and_delta():
    rng = np.random.default_rng(3)
    challenger = rng.random(250) < 0.8
    holder = rng.random(250) < 0.7
    result = mcnemar_exact(challenger.tolist(), holder.astype(int).tolist(), metric="exact_match")

    b = sum(1 for x, y in zip(challenger, holder) if x and not y)
    c = sum(1 for x, y in zip(challenger, holder) if y and not x)
    assert (result.challenger_only, result.holder_only) == (b, c)
    assert result.n == 250
    assert result.method == "mcnemar-exact" and result.metric == "exact_match"
    assert result.challenger == pytest.approx(challenger.mean())
    assert result.holder == pytest.approx(holder.mean())
    assert result.delta == pytest.approx(challenger.mean() - holder.mean())
    assert result.low <= result.delta <= result.high


def newcombe_method_10(e: int, f: int, g: int, h: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe (1998) method 10, written out from the paper's formulas, for the paired table
    e (both right), f (first only), g (second only), h (neither): theta = (f - g) / n."""
    n = e + f + g + h
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = wilson(e + f, n, confidence)
    l2, u2 = wilson(e + g, n, confidence)
    margins = (e + f) * (g + h) * (e + g) * (f + h)
    ad_minus_bc = e * h - f * g
    if margins == 0:
        phi = 0.0
    elif ad_minus_bc > n / 2:
        phi = (ad_minus_bc - n / 2) / math.sqrt(margins)
    elif ad_minus_bc >= 0:
        phi = 0.0
    else:
        phi = ad_minus_bc / math.sqrt(margins)
    theta = (f - g) / n
    delta = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    epsilon = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return theta - delta, theta + epsilon


def test_mcnemar_interval_is_newcombes_hybrid_score_interval():
    rng = np.random.default_rng(14)
    scenarios = [(0.6, 0.12, 0.06, 0.22), (0.7, 0.15, 0.03, 0.12), (0.3, 0.05, 0.2, 0.45), (0.9, 0.04, 0.04, 0.02)]
    for probs in scenarios:
        for confidence in (0.9, 0.95, 0.99):
            challenger, holder = simulate_labels(rng, probs, int(rng.integers(5, 400)))
            result = mcnemar_exact(challenger, holder, confidence=confidence)
            both = int(np.sum(challenger & holder))
            neither = result.n - both - result.challenger_only - result.holder_only
            low, high = newcombe_method_10(both, result.challenger_only, result.holder_only, neither, confidence)
            assert result.low == pytest.approx(low, abs=1e-12)
            assert result.high == pytest.approx(high, abs=1e-12)
            assert result.confidence == confidence


# Newcombe (1998), Statistics in Medicine 17:2635-2650, the 95% limits of method 10 for the paper's worked
# examples, published to 4 decimals: e both right, f first only, g second only, h neither.
NEWCOMBE_EXAMPLES = [
    (36, 12, 2, 0, 0.0569, 0.3404), (20, 12, 2, 16, 0.0562, 0.3292), (18, 12, 2, 18, 0.0562, 0.3290),
    (36, 14, 0, 0, 0.1528, 0.4167), (35, 14, 0, 1, 0.1461, 0.4175), (18, 14, 0, 18, 0.1441, 0.3963),
    (2, 97, 1, 0, 0.8721, 0.9854), (1, 97, 1, 1, 0.8736, 0.9850), (0, 29, 1, 0, 0.6666, 0.9882),
    (2, 98, 0, 0, 0.9178, 0.9945), (1, 98, 0, 1, 0.9171, 0.9916), (0, 30, 0, 0, 0.8395, 1.0),
    (54, 0, 0, 0, -0.0664, 0.0664), (53, 0, 0, 1, -0.0729, 0.0729), (30, 0, 0, 24, -0.0358, 0.0358),
    (29, 0, 0, 25, -0.0354, 0.0354), (28, 0, 0, 26, -0.0352, 0.0352), (27, 0, 0, 27, -0.0351, 0.0351),
]


@pytest.mark.parametrize("e, f, g, h, low, high", NEWCOMBE_EXAMPLES)
def test_mcnemar_interval_reproduces_newcombes_published_examples(e, f, g, h, low, high):
    result = mcnemar_exact(*paired_labels(f, g, both=e, neither=h))
    assert result.delta == pytest.approx((f - g) / (e + f + g + h))
    # One unit in the 4th decimal: the published limits are rounded (one of them, 0.8736, is 0.87367).
    assert result.low == pytest.approx(low, abs=1e-4)
    assert result.high == pytest.approx(high, abs=1e-4)


def test_mcnemar_interval_matches_a_textbook_example():
    # Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, chapter 8, and its companion
    # code: Cavo et al. (2012), complete response before and after consolidation therapy, table [[59, 6], [16, 80]];
    # Newcombe square-and-add (method 10) -0.0621 (95% -0.1186 to -0.0046).
    result = mcnemar_exact(*paired_labels(6, 16, both=59, neither=80))
    assert result.delta == pytest.approx(-0.0621, abs=5e-5)
    assert result.low == pytest.approx(-0.1186, abs=5e-5)
    assert result.high == pytest.approx(-0.0046, abs=5e-5)


def test_mcnemar_interval_is_valid_for_every_small_table():
    # Every paired table of up to 6 items: the interval lies in [-1, 1] around the observed difference,
    # has a positive width, and swapping the two models mirrors it.
    for n in range(1, 7):
        for both in range(n + 1):
            for b in range(n + 1 - both):
                for c in range(n + 1 - both - b):
                    neither = n - both - b - c
                    result = mcnemar_exact(*paired_labels(b, c, both=both, neither=neither))
                    swapped = mcnemar_exact(*paired_labels(c, b, both=both, neither=neither))
                    assert -1.0 <= result.low <= result.delta <= result.high <= 1.0
                    assert result.low < result.high
                    assert (swapped.low, swapped.high) == pytest.approx((-result.high, -result.low), abs=1e-12)
                    assert swapped.p_value == result.p_value


def test_mcnemar_interval_widens_with_the_confidence():
    challenger, holder = paired_labels(17, 6, both=150, neither=27)
    widths = [mcnemar_exact(challenger, holder, confidence=level) for level in (0.8, 0.9, 0.95, 0.99)]
    assert all(a.low > b.low and a.high < b.high for a, b in zip(widths, widths[1:]))
    assert len({r.p_value for r in widths}) == 1


def test_mcnemar_interval_excludes_zero_when_clearly_better():
    result = mcnemar_exact(*paired_labels(40, 5, both=200, neither=55))
    assert result.n == 300
    assert result.low > 0
    assert result.p_value < 0.001


def test_mcnemar_interval_includes_zero_for_a_few_disagreements():
    result = mcnemar_exact(*paired_labels(6, 4, both=250, neither=40))
    assert result.low < 0 < result.high
    assert result.p_value > 0.5


def test_mcnemar_without_disagreements():
    # Identical answers: no evidence of a difference, and an interval around 0 that narrows as n grows.
    result = mcnemar_exact(*paired_labels(0, 0, both=80, neither=20))
    assert (result.delta, result.p_value) == (0.0, 1.0)
    assert (result.challenger_only, result.holder_only) == (0, 0)
    assert result.challenger == result.holder == pytest.approx(0.8)
    assert result.low < 0 < result.high and result.low == pytest.approx(-result.high)
    assert result.high - result.low < 0.07
    large = mcnemar_exact(*paired_labels(0, 0, both=8000, neither=2000))
    assert large.low < 0 < large.high and large.high - large.low < 0.001


@pytest.mark.parametrize("right", [True, False])
def test_mcnemar_when_both_models_get_every_item_right_or_wrong(right):
    n = 50
    result = mcnemar_exact([right] * n, [right] * n)
    z = stats.norm.ppf(0.975)
    # Both accuracies are 1 (or 0): the interval is the Wilson interval's distance from 1 (or 0), either way.
    assert (result.low, result.high) == pytest.approx((-z * z / (n + z * z), z * z / (n + z * z)), abs=1e-12)
    assert (result.delta, result.p_value, result.challenger_only, result.holder_only) == (0.0, 1.0, 0, 0)
    assert decide(result, "non-inferior", margin=0.1).passed and not decide(result).passed


def test_mcnemar_when_one_model_gets_every_item_right_and_the_other_none():
    result = mcnemar_exact([1] * 40, [0] * 40)
    assert (result.delta, result.high, result.challenger_only, result.holder_only) == (1.0, 1.0, 40, 0)
    assert 0.8 < result.low < 1.0
    reverse = mcnemar_exact([0] * 40, [1] * 40)
    assert (reverse.low, reverse.high) == pytest.approx((-result.high, -result.low))


@pytest.mark.parametrize("challenger, holder", [([1], [1]), ([0], [0]), ([1], [0]), ([0], [1])])
def test_mcnemar_with_a_single_item(challenger, holder):
    result = mcnemar_exact(challenger, holder)
    assert result.n == 1 and result.p_value == 1.0
    assert -1.0 <= result.low <= result.delta <= result.high <= 1.0
    assert result.low < 0 < result.high  # one item proves nothing either way
    assert not decide(result).passed


def test_interval_and_p_value_can_disagree_at_the_border_and_the_gate_uses_the_interval():
    # 14 vs 5 disagreements on 300 items: the exact McNemar p-value is just above 0.05, while the (unconditional)
    # interval just excludes 0; the gate follows the interval.
    result = mcnemar_exact(*paired_labels(14, 5, both=230, neither=51))
    assert result.p_value > 0.05
    assert 0 < result.low < 0.005
    assert decide(result).passed


@pytest.mark.parametrize(
    "challenger, holder",
    [([1, 0, 1], [1, 0]), ([], []), ([1, 2, 0], [1, 0, 0]), ([[1, 0]], [[1, 0]]), ([1.0, math.nan], [1, 0])],
)
def test_mcnemar_refuses_bad_inputs(challenger, holder):
    with pytest.raises(ValueError):
        mcnemar_exact(challenger, holder)


@pytest.mark.parametrize("confidence", [0, 1, 95, -0.5])
def test_bad_confidence_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence"):
        mcnemar_exact([1, 0], [0, 1], confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0, 0.0], [0.0, 1.0], confidence=confidence)


@pytest.mark.parametrize(
    "probs, n, seed",
    [
        ((0.6, 0.12, 0.06, 0.22), 200, 11),  # a moderate gain
        ((0.70, 0.15, 0.03, 0.12), 200, 15),  # a large gain, two thirds of the disagreement rate
        ((0.70, 0.15, 0.03, 0.12), 60, 16),  # the same on few items
        ((0.90, 0.05, 0.01, 0.04), 200, 17),  # near the ceiling
        ((0.80, 0.02, 0.02, 0.16), 200, 18),  # no difference, few disagreements
    ],
)
def test_mcnemar_interval_covers_the_true_difference(probs, n, seed):
    # Paired Bernoulli with a known true difference P(challenger only) - P(holder only), 95% intervals.
    rng = np.random.default_rng(seed)
    truth = probs[1] - probs[2]
    trials = 600
    covered = 0
    for _ in range(trials):
        result = mcnemar_exact(*simulate_labels(rng, probs, n))
        covered += result.low <= truth <= result.high
    assert covered / trials >= 0.93


def test_non_inferior_gate_false_pass_rate_with_few_disagreements():
    # The challenger is exactly the margin (0.02) worse and the models disagree on only 4% of the items: the gate
    # should pass it at most about 2.5% of the time (one side of a 95% interval).
    rng = np.random.default_rng(19)
    probs, margin, trials = (0.80, 0.01, 0.03, 0.16), 0.02, 2000
    passed = sum(decide(mcnemar_exact(*simulate_labels(rng, probs, 200)), "non-inferior", margin).passed
                 for _ in range(trials))
    assert passed / trials <= 0.03


def test_better_gate_false_pass_rate_without_a_difference():
    rng = np.random.default_rng(20)
    trials = 1000
    passed = sum(decide(mcnemar_exact(*simulate_labels(rng, (0.80, 0.02, 0.02, 0.16), 200))).passed
                 for _ in range(trials))
    assert passed / trials <= 0.03


# --- paired bootstrap ----------------------------------------------------------------------------


def test_paired_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    holder = rng.random(400)
    challenger = np.clip(holder + rng.normal(0.02, 0.1, 400), 0, 1)
    first = paired_bootstrap(challenger, holder, samples=2000, seed=7)
    again = paired_bootstrap(challenger.tolist(), holder.tolist(), samples=2000, seed=7)
    other = paired_bootstrap(challenger, holder, samples=2000, seed=8)
    assert first == again
    assert (other.low, other.high) != (first.low, first.high)
    assert first.low <= first.delta <= first.high
    assert first.delta == pytest.approx(np.mean(challenger - holder))
    assert first.challenger == pytest.approx(challenger.mean())
    assert first.holder == pytest.approx(holder.mean())
    assert first.method == "paired-bootstrap" and first.metric == "f1" and first.n == 400
    assert first.challenger_only is None and first.holder_only is None


def test_paired_bootstrap_of_identical_scores():
    scores = np.random.default_rng(5).random(300)
    result = paired_bootstrap(scores, scores.copy(), samples=500)
    assert (result.delta, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_p_value_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(6)
    holder = rng.random(500)
    gain = paired_bootstrap(holder + 0.05 + rng.normal(0, 0.1, 500), holder, samples=2000)
    noise = paired_bootstrap(holder + rng.normal(0, 0.1, 500), holder, samples=2000)
    assert gain.low > 0 and gain.p_value < 0.01
    assert noise.low < 0 < noise.high and noise.p_value > 0.05


def test_paired_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng(9)
    holder = rng.random(2000)
    challenger = holder + rng.normal(0.01, 0.2, 2000)
    result = paired_bootstrap(challenger, holder, samples=4000)
    differences = challenger - holder
    expected = 2 * 1.959964 * differences.std() / math.sqrt(differences.size)
    assert result.high - result.low == pytest.approx(expected, rel=0.1)


def test_paired_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(12)
    truth = 0.03
    covered = 0
    for seed in range(300):
        item = rng.normal(0.6, 0.2, 100)  # how hard each item is, shared by both models
        holder = item + rng.normal(0, 0.1, 100)
        challenger = item + truth + rng.normal(0, 0.1, 100)
        result = paired_bootstrap(challenger, holder, samples=1000, seed=seed)
        covered += result.low <= truth <= result.high
    assert covered / 300 >= 0.90


@pytest.mark.parametrize(
    "challenger, holder, samples",
    [([0.1, 0.2], [0.3], 100), ([], [], 100), ([0.1, math.inf], [0.1, 0.2], 100), ([0.1], [0.2], 0)],
)
def test_paired_bootstrap_refuses_bad_inputs(challenger, holder, samples):
    with pytest.raises(ValueError):
        paired_bootstrap(challenger, holder, samples=samples)


# --- one model's intervals -----------------------------------------------------------------------


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval, written out from its textbook formula."""
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (2 * n * p + z**2) / (2 * (n + z**2))
    half = z * math.sqrt(z**2 + 4 * n * p * (1 - p)) / (2 * (n + z**2))
    return centre - half, centre + half


@pytest.mark.parametrize("successes, n, confidence", [(0, 10, 0.95), (7, 10, 0.95), (10, 10, 0.9), (412, 500, 0.99)])
def test_proportion_interval_is_wilson(successes, n, confidence):
    low, high = proportion_interval(successes, n, confidence)
    expected_low, expected_high = wilson(successes, n, confidence)
    assert low == pytest.approx(expected_low, abs=1e-12)
    assert high == pytest.approx(expected_high, abs=1e-12)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_proportion_interval_matches_statsmodels():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for successes, n in [(0, 25), (3, 25), (180, 200), (999, 1000)]:
        expected = proportion.proportion_confint(successes, n, alpha=0.05, method="wilson")
        assert proportion_interval(successes, n) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("successes, n", [(5, 0), (-1, 10), (11, 10), (2.5, 10)])
def test_proportion_interval_refuses_bad_counts(successes, n):
    with pytest.raises(ValueError):
        proportion_interval(successes, n)


def test_mean_interval():
    scores = np.random.default_rng(10).normal(0.7, 0.15, 1500)
    low, high = mean_interval(scores, samples=4000, seed=3)
    assert low < scores.mean() < high
    expected = 2 * 1.959964 * scores.std() / math.sqrt(scores.size)
    assert high - low == pytest.approx(expected, rel=0.1)
    assert mean_interval(scores, samples=4000, seed=3) == (low, high)
    assert mean_interval([0.5] * 20, samples=100) == (0.5, 0.5)


# --- the gate ------------------------------------------------------------------------------------

V3, V2 = "support-bot v3", "support-bot v2 (production)"


def test_better_gate_passes_a_clear_gain():
    result = mcnemar_exact(*paired_labels(40, 5, both=200, neither=55))
    decision = decide(result, challenger=V3, holder=V2)
    assert isinstance(decision, GateDecision)
    assert decision.passed and decision.gate == "better" and decision.margin == 0.0
    assert decision.result is result
    assert "PASSED" in decision.message and "--force" not in decision.message


def test_better_gate_message_for_a_wide_interval():
    result = mcnemar_exact(*paired_labels(12, 5, both=232, neither=51))
    assert result.low < 0 < result.high
    decision = decide(result, challenger=V3, holder=V2)
    message = decision.message
    assert not decision.passed
    assert "\n" not in message
    assert V3 in message and V2 in message
    assert "300" in message
    assert "on 12 items" in message and "reverse on 5" in message
    assert f"{result.challenger:.4f}" in message and f"{result.holder:.4f}" in message
    assert f"{result.delta:+.4f}" in message
    assert f"{result.low:+.4f}" in message and f"{result.high:+.4f}" in message
    assert f"p = {result.p_value:.3g}" in message
    assert "REFUSED" in message
    assert "more held-out items" in message and "--force --reason" in message


def test_better_gate_message_when_the_challenger_is_worse():
    result = mcnemar_exact(*paired_labels(5, 40, both=200, neither=55))
    decision = decide(result, challenger=V3, holder=V2)
    assert not decision.passed
    assert "worse" in decision.message and f"keep {V2}" in decision.message
    assert "more held-out items" not in decision.message


def test_better_gate_refuses_identical_models():
    decision = decide(mcnemar_exact(*paired_labels(0, 0, both=90, neither=10)))
    assert not decision.passed
    assert "same on every item" in decision.message and "keep holder" in decision.message
    identical_scores = np.random.default_rng(21).random(50)
    decision = decide(paired_bootstrap(identical_scores, identical_scores.copy(), samples=200))
    assert not decision.passed and "same on every item" in decision.message


def test_non_inferior_gate_with_identical_models():
    # Identical answers on 100 items bound the difference to about +-0.035: within a 0.05 margin, not a 0.01 one.
    result = mcnemar_exact(*paired_labels(0, 0, both=90, neither=10))
    assert decide(result, "non-inferior", margin=0.05).passed
    tight = decide(result, "non-inferior", margin=0.01)
    assert not tight.passed
    assert "same on every item" in tight.message and "more held-out items" in tight.message
    assert "margin of 0.0100" in tight.message and "--force --reason" in tight.message


def test_non_inferior_gate_uses_the_margin():
    # Slightly worse challenger: interval roughly -0.05 to +0.02.
    result = mcnemar_exact(*paired_labels(10, 15, both=250, neither=25))
    assert -0.06 < result.low < -0.03 and result.high > 0
    assert not decide(result, "better").passed
    loose = decide(result, "non-inferior", margin=0.06, challenger=V3, holder=V2)
    tight = decide(result, "non-inferior", margin=0.02, challenger=V3, holder=V2)
    assert loose.passed and loose.margin == 0.06
    assert "0.0600" in loose.message and "PASSED" in loose.message
    assert not tight.passed
    assert "0.0200" in tight.message and "margin" in tight.message and "--force" in tight.message


def test_non_inferior_gate_refuses_a_challenger_worse_than_the_margin():
    result = mcnemar_exact(*paired_labels(5, 40, both=200, neither=55))
    decision = decide(result, "non-inferior", margin=0.02, challenger=V3, holder=V2)
    assert result.high < -0.02
    assert not decision.passed
    assert "worse" in decision.message and "margin of 0.0200" in decision.message
    assert f"keep {V2}" in decision.message


def test_gate_with_a_bootstrap_result_has_no_counts():
    rng = np.random.default_rng(13)
    holder = rng.random(300)
    result = paired_bootstrap(holder + rng.normal(0.0, 0.1, 300), holder, samples=1000)
    decision = decide(result, challenger=V3, holder=V2)
    assert "\n" not in decision.message
    assert "reverse on" not in decision.message and "paired bootstrap" in decision.message


@pytest.mark.parametrize(
    "gate, margin",
    [("best", 0.0), ("noninferior", 0.01), ("non-inferior", -0.01), ("non-inferior", math.nan), ("better", 0.02)],
)
def test_bad_gate_or_margin_is_refused(gate, margin):
    result = mcnemar_exact(*paired_labels(10, 5, both=80, neither=5))
    with pytest.raises(ValueError):
        decide(result, gate, margin)


def test_as_dict_is_json_ready():
    result = mcnemar_exact(*paired_labels(12, 3, both=70, neither=15))
    decision = decide(result, "non-inferior", margin=0.01)
    data = json.loads(json.dumps(decision.as_dict()))
    assert data["passed"] == decision.passed and data["gate"] == "non-inferior"
    assert data["result"] == json.loads(json.dumps(result.as_dict()))
    assert PairedResult(**data["result"]) == result
