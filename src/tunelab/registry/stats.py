"""Statistics of the promotion gate: is a challenger really better than the model it would replace?

Both models are scored on the SAME held-out items, so the comparison is paired: each item is
compared with itself, which removes the item-to-item variation and needs far fewer items than
comparing two independent averages.

- Label metrics (right or wrong per item, e.g. accuracy) use ``mcnemar_exact``: the p-value is
  the exact McNemar test (only the items where the two models disagree carry information), and
  the interval of the difference in accuracies is Newcombe's hybrid score interval for paired
  proportions (Newcombe 1998, method 10), which does not treat the observed disagreement rate as
  known and so keeps close to its nominal coverage even when one model is much better. The two
  are different procedures, so near the border they can disagree: typically a 95% interval just
  clear of 0 while the exact p-value, which is conservative, is a little above 0.05 (14 against 5
  disagreements on 300 items: interval +0.0006 to +0.0602, p = 0.064). The gate decides on the
  interval alone; the p-value is reported as evidence.
- Per-item scores (e.g. token F1 per answer) use a paired percentile bootstrap
  (``paired_bootstrap``) of the mean difference.

Both return a ``PairedResult``; ``decide`` turns it into a pass/refuse verdict with a message a
user can act on. ``proportion_interval`` and ``mean_interval`` give the interval of one model's
score, for its model card.

Everything here is a pure function over numbers: no files, no models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

# How many resampled indices one bootstrap chunk may hold (32 MiB of int64): bounds memory while
# keeping the work vectorised. 10,000 samples of 5,000 items run as about a dozen chunks.
_CHUNK_ELEMENTS = 1 << 22

GATES = ("better", "non-inferior")


@dataclass(frozen=True)
class PairedResult:
    """A challenger compared with the current holder on the same ``n`` items.

    ``delta`` is challenger minus holder, so a positive delta favours the challenger; ``low`` and
    ``high`` bound it at the given ``confidence``. ``challenger_only`` and ``holder_only`` count
    the items only one model got right; they exist for label metrics only.
    """

    metric: str
    method: str
    n: int
    challenger: float
    holder: float
    delta: float
    low: float
    high: float
    p_value: float
    challenger_only: int | None = None
    holder_only: int | None = None
    confidence: float = 0.95

    def as_dict(self) -> dict:
        """Plain types only, ready for JSON."""
        return asdict(self)


# --- input checks --------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> float:
    """A confidence level is a probability strictly between 0 and 1 (0.95, not 95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    return float(confidence)


def _check_samples(samples: int) -> int:
    """The bootstrap needs at least one resample; fractional counts are a caller's mistake."""
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be a positive whole number, got {samples}")
    return int(samples)


def _scores(values, name: str) -> np.ndarray:
    """One finite number per item, as a 1-D float array; an empty or NaN list would mislead."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected one score per item (a flat list), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: no items to compare")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: scores must be finite numbers (found NaN or infinity)")
    return array


def _check_paired(first: np.ndarray, second: np.ndarray) -> None:
    """Different lengths mean the two models were not scored on the same items."""
    if first.size != second.size:
        raise ValueError(
            f"lengths differ ({first.size} vs {second.size}): score both models on the same items"
        )


def _correct(values, name: str) -> np.ndarray:
    """Right/wrong per item as booleans; anything but 0/1 (or True/False) is refused."""
    array = _scores(values, name)
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name}: expected right/wrong per item (True/False or 1/0)")
    return array == 1


# --- exact McNemar for label metrics -------------------------------------------------------------


def mcnemar_exact(
    challenger_correct, holder_correct, metric: str = "accuracy", confidence: float = 0.95
) -> PairedResult:
    """Exact McNemar test of two models' right/wrong answers on the same items, with an interval.

    Items both models got right, or both got wrong, say nothing about which is better; only the
    ``d = b + c`` discordant items do, where ``b`` is the number the challenger alone got right
    and ``c`` the number the holder alone got right. If the models are equally good, each
    discordant item is a fair coin flip, so the p-value is the two-sided exact binomial test of
    ``b ~ Bin(d, 0.5)``.

    The interval of ``delta = (b - c) / n`` (the difference in accuracies) is Newcombe's hybrid
    score interval for paired data (Newcombe 1998, "Improved confidence intervals for the
    difference between binomial proportions based on paired data", Statistics in Medicine 17,
    method 10; see ``_paired_difference_interval``). It is unconditional: it does not treat the
    discordance rate ``d / n`` as fixed, so it keeps close to its nominal coverage when one model
    is much better, where an interval built from ``b / d`` alone runs narrow. It was chosen over
    Tango's score interval, which performs about as well, because it has a closed form (no root
    search), is built from the same Wilson intervals as ``proportion_interval``, and can be checked
    against the paper's published worked examples.

    The p-value and the interval are separate procedures (the p-value conditions on ``d``, the
    interval does not), so at the border they can disagree, typically an interval just clear of 0
    with an exact p-value a little above ``1 - confidence``; the gate (``decide``) uses the
    interval.

    With no discordant items the two models agree everywhere: delta 0 and p = 1, and the interval
    is a narrow one around 0 that shrinks as ``n`` grows (not [0, 0]: agreement on ``n`` items
    still leaves some uncertainty about the difference on items not yet seen).
    """
    confidence = _check_confidence(confidence)
    first = _correct(challenger_correct, "challenger")
    second = _correct(holder_correct, "holder")
    _check_paired(first, second)
    n = int(first.size)
    both = int(np.sum(first & second))
    b = int(np.sum(first & ~second))
    c = int(np.sum(~first & second))
    neither = n - both - b - c
    low, high = _paired_difference_interval(both, b, c, neither, confidence)
    return PairedResult(
        metric=metric,
        method="mcnemar-exact",
        n=n,
        challenger=float(first.mean()),
        holder=float(second.mean()),
        delta=(b - c) / n,
        low=low,
        high=high,
        p_value=_mcnemar_p_value(b, c),
        challenger_only=b,
        holder_only=c,
        confidence=confidence,
    )


def _mcnemar_p_value(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``b ~ Bin(b + c, 0.5)``; 1 when b = c = 0."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def _paired_difference_interval(
    both: int, b: int, c: int, neither: int, confidence: float
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) of ``p1 - p2`` for paired right/wrong answers.

    ``both``, ``b`` (first model only), ``c`` (second model only) and ``neither`` are the four
    cells of the paired table, so ``p1 = (both + b) / n``, ``p2 = (both + c) / n`` and
    ``p1 - p2 = (b - c) / n``. With ``[l1, u1]`` and ``[l2, u2]`` the Wilson score intervals of
    ``p1`` and ``p2``, the limits are ``(b - c) / n - sqrt((p1 - l1)**2 - 2 phi (p1 - l1)(u2 - p2)
    + (u2 - p2)**2)`` and ``(b - c) / n + sqrt((u1 - p1)**2 - 2 phi (u1 - p1)(p2 - l2) + (p2 -
    l2)**2)``: each side adds the two Wilson half-widths that push the difference that way,
    allowing for the correlation ``phi`` between the two models' answers.

    ``phi`` is the correlation of the 2x2 table with Newcombe's continuity correction:
    ``A = both * neither - b * c`` is reduced by ``n / 2`` when it exceeds ``n / 2``, set to 0
    when it lies between 0 and ``n / 2`` and kept when negative, then divided by the square root
    of the product of the four margins (``phi = 0`` when a margin is 0, e.g. when one model got
    every item right). Without the correction, identical answers would give ``phi = 1`` and an
    interval that is [0, 0], or nearly, however few the items.

    The limits always lie within [-1, 1] and around the observed difference; they are clipped to
    [-1, 1] only against rounding.
    """
    n = both + b + c + neither
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    first, second = both + b, both + c
    p1, p2 = first / n, second / n
    l1, u1 = _wilson(first, n, z)
    l2, u2 = _wilson(second, n, z)
    margins = first * (n - first) * second * (n - second)  # Python ints: no overflow
    phi = 0.0
    if margins > 0:
        cross = both * neither - b * c
        if cross > n / 2:
            cross -= n / 2
        elif cross >= 0:
            cross = 0
        phi = cross / math.sqrt(margins)
    delta = (b - c) / n
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, delta - below), min(1.0, delta + above)


# --- paired bootstrap for per-item scores --------------------------------------------------------


def _bootstrap_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Means of ``samples`` resamples (items drawn with replacement) of ``values``.

    Resamples are drawn in chunks of rows so memory stays bounded however many items and samples
    there are, while each chunk is one vectorised draw and gather. The same seed gives the same
    means.
    """
    rng = np.random.default_rng(seed)
    n = values.size
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(samples)
    for start in range(0, samples, rows_per_chunk):
        rows = min(rows_per_chunk, samples - start)
        indices = rng.integers(0, n, size=(rows, n))
        means[start : start + rows] = values[indices].mean(axis=1)
    return means


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` share of the bootstrap distribution (percentile method)."""
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "no difference".

    Twice the smaller share of resampled deltas on either side of 0 (each side counting 0
    itself), clipped to 1: how far into a tail of the bootstrap distribution 0 lies. Its
    resolution is ``1 / samples``, so a value of 0 means "below what the resamples can show".
    """
    at_or_below = float(np.mean(deltas <= 0))
    at_or_above = float(np.mean(deltas >= 0))
    return min(1.0, 2 * min(at_or_below, at_or_above))


def paired_bootstrap(
    challenger_scores,
    holder_scores,
    metric: str = "f1",
    samples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """Paired percentile bootstrap of the mean per-item difference, challenger minus holder.

    Items are resampled with replacement and each resample keeps an item's two scores together,
    so the interval reflects how much the difference depends on which items happened to be
    held out. The metric must be a mean of per-item scores (per-answer F1, not a corpus F1).
    The p-value is described in ``_bootstrap_p_value``. Deterministic for a given ``seed``.
    """
    confidence = _check_confidence(confidence)
    samples = _check_samples(samples)
    first, second = _scores(challenger_scores, "challenger"), _scores(holder_scores, "holder")
    _check_paired(first, second)
    differences = first - second
    deltas = _bootstrap_means(differences, samples, seed)
    low, high = _percentile_interval(deltas, confidence)
    return PairedResult(
        metric=metric,
        method="paired-bootstrap",
        n=int(first.size),
        challenger=float(first.mean()),
        holder=float(second.mean()),
        delta=float(differences.mean()),
        low=low,
        high=high,
        p_value=_bootstrap_p_value(deltas),
        confidence=confidence,
    )


# --- one model's interval, for a model card ------------------------------------------------------


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion such as accuracy (``successes`` right of ``n``).

    Unlike the textbook ``p +- z * sqrt(p(1-p)/n)``, it stays inside [0, 1] and keeps close to
    its nominal coverage near 0 and 1 and for small ``n``, where model accuracies often sit.
    """
    confidence = _check_confidence(confidence)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of items, got {n}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be a whole number between 0 and n={n}, got {successes}")
    return _wilson(successes, n, float(stats.norm.ppf(0.5 + confidence / 2)))


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n`` for the normal quantile ``z``, within [0, 1]."""
    share = successes / n
    shrink = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / shrink
    half_width = z / shrink * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def mean_interval(scores, samples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of one model's mean per-item score. Deterministic for a seed."""
    confidence = _check_confidence(confidence)
    samples = _check_samples(samples)
    values = _scores(scores, "scores")
    return _percentile_interval(_bootstrap_means(values, samples, seed), confidence)


# --- the gate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger may replace the holder, with the evidence and a one-paragraph reason."""

    passed: bool
    gate: str
    margin: float
    result: PairedResult
    message: str

    def as_dict(self) -> dict:
        """Plain types only (the result nested as a dict), ready for JSON."""
        return asdict(self)


def _threshold(gate: str, margin: float) -> float:
    """The value the interval's lower end must exceed.

    "better" asks for a real improvement: the whole interval above 0. "non-inferior" accepts a
    challenger that is at most ``margin`` worse (useful when it is smaller, cheaper or faster):
    the whole interval above ``-margin``. A margin only makes sense for "non-inferior".
    """
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}: use one of {', '.join(GATES)}")
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if gate == "better" and margin != 0:
        raise ValueError(f"a margin ({margin}) applies only to the non-inferior gate; the better gate uses 0")
    return -float(margin)


def decide(
    result: PairedResult,
    gate: str = "better",
    margin: float = 0.0,
    challenger: str = "challenger",
    holder: str = "holder",
) -> GateDecision:
    """Apply the promotion gate to a paired comparison.

    The gate passes only when the whole ``result.confidence`` interval of the difference clears
    the threshold (0 for "better", ``-margin`` for "non-inferior"): a lucky observed difference on
    too few items is not enough. The message names both models and says what to do next.
    """
    threshold = _threshold(gate, margin)
    passed = result.low > threshold
    message = " ".join(
        [
            _evidence(result, challenger, holder),
            _verdict(gate, margin, passed, challenger),
            "" if passed else _advice(result, gate, margin, threshold, challenger, holder),
        ]
    ).strip()
    return GateDecision(passed=passed, gate=gate, margin=float(margin), result=result, message=message)


# --- the gate's message --------------------------------------------------------------------------


def _signed(value: float) -> str:
    """A difference with its sign, 4 decimals: +0.0300, -0.0125 (never "-0.0000")."""
    rounded = round(value, 4)
    return f"{rounded + 0.0:+.4f}"


def _format_p(p_value: float) -> str:
    """A p-value with 3 significant digits; a bootstrap's 0 means "smaller than 1 / samples"."""
    if p_value == 0:
        return "p = 0 to the bootstrap's resolution (no resampled difference reached 0)"
    return f"p = {p_value:.3g}"


def _format_confidence(confidence: float) -> str:
    """0.95 -> "95%", 0.975 -> "97.5%"."""
    return f"{confidence * 100:g}%"


def _method_name(method: str) -> str:
    """How a method reads in a sentence."""
    return {"mcnemar-exact": "exact McNemar test", "paired-bootstrap": "paired bootstrap"}.get(method, method)


def _evidence(result: PairedResult, challenger: str, holder: str) -> str:
    """What was measured: the models, the items, the disagreements, the means, delta, interval, p."""
    parts = [
        f"{challenger} vs {holder} on {result.n} paired held-out items "
        f"({result.metric}, {_method_name(result.method)}):"
    ]
    if result.challenger_only is not None and result.holder_only is not None:
        parts.append(
            f"{challenger} was right where {holder} was wrong on {result.challenger_only} items, "
            f"the reverse on {result.holder_only};"
        )
    parts.append(
        f"{result.metric} {result.challenger:.4f} vs {result.holder:.4f}, "
        f"difference {_signed(result.delta)} "
        f"({_format_confidence(result.confidence)} interval {_signed(result.low)} to {_signed(result.high)}), "
        f"{_format_p(result.p_value)}."
    )
    return " ".join(parts)


def _verdict(gate: str, margin: float, passed: bool, challenger: str) -> str:
    """PASSED or REFUSED, with the rule that was applied."""
    if gate == "better":
        rule = "the whole interval must lie above 0"
        outcome = f"{challenger} is better" if passed else "the interval does not lie above 0"
    else:
        rule = f"the whole interval must lie above {_signed(-margin)}, i.e. within the margin of {margin:.4f}"
        outcome = (
            f"{challenger} is at most {margin:.4f} worse"
            if passed
            else f"the interval does not lie above {_signed(-margin)}"
        )
    return f"Gate '{gate}' ({rule}): {'PASSED' if passed else 'REFUSED'}, {outcome}."


def _advice(
    result: PairedResult, gate: str, margin: float, threshold: float, challenger: str, holder: str
) -> str:
    """What to do after a refusal, chosen by where the interval lies relative to the threshold."""
    override = "or override with --force --reason TEXT if you accept the risk."
    if result.high < threshold:
        if gate == "better":
            return f"Next: {challenger} is worse than {holder}: keep {holder}, {override}"
        return (
            f"Next: {challenger} is worse than {holder} by more than the margin of {margin:.4f}: "
            f"keep {holder}, {override}"
        )
    if _identical(result):
        if gate == "better":
            return (
                f"Next: the two models scored the same on every item, so there is no evidence of a gain: "
                f"keep {holder}, {override}"
            )
        return (
            f"Next: the two models scored the same on every item, but {result.n} items are too few to "
            f"bound the difference within the margin of {margin:.4f}: evaluate on more held-out items, {override}"
        )
    if result.delta > threshold:
        return (
            f"Next: evaluate on more held-out items (the interval is too wide to tell; "
            f"{_items_needed_hint(result, threshold)}), {override}"
        )
    if gate == "better":
        behind = f"{challenger} is not ahead of {holder} on these items"
    else:
        behind = f"{challenger} trails {holder} by more than the margin of {margin:.4f} on these items"
    return f"Next: {behind}, so more items are unlikely to make it pass: keep {holder}, {override}"


def _identical(result: PairedResult) -> bool:
    """Both models scored the same on every item.

    For right/wrong answers that is "no item where only one model was right" (the interval is then
    a narrow one around 0, not [0, 0]); for per-item scores, a bootstrap of all-zero differences.
    """
    if result.challenger_only is not None and result.holder_only is not None:
        return result.challenger_only == result.holder_only == 0
    return result.low == result.high == result.delta == 0


def _items_needed_hint(result: PairedResult, threshold: float) -> str:
    """A rough count of items that would settle the question if the observed difference held.

    Interval widths shrink like ``1 / sqrt(n)``, so the lower end moves to the threshold at about
    ``n * ((delta - low) / (delta - threshold))**2`` items. Rounded up to two significant digits:
    it is a guide, not a promise.
    """
    needed = result.n * ((result.delta - result.low) / (result.delta - threshold)) ** 2
    return (
        f"if the difference of {_signed(result.delta)} holds, "
        f"roughly {_round_up(needed)} items in all would settle it"
    )


def _round_up(value: float) -> int:
    """Round up to two significant digits: 1187.2 -> 1200, 87.1 -> 88."""
    whole = math.ceil(value)
    step = 10 ** max(0, len(str(whole)) - 2)
    return math.ceil(whole / step) * step
