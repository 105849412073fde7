"""What the server records: served responses, feedback on them, and A/B tests between models.

The server (tunelab.serve) calls these functions; the CLI and the dashboard read the same tables. People are
never stored by name: the ``user`` field of a request becomes ``user_hash``, an HMAC under a secret salt,
which is the subject id that finds one person's responses and feedback to export or erase them.

An A/B test splits traffic between arms (model names) by weight. ``pick_arm`` is sticky: one subject
always lands in the same arm, so a person sees one model for the whole test. ``ab_report`` compares the
arms on latency, tokens and feedback, with a significance test and a verdict in plain words.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
from scipy import stats
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.keys import secret
from tunelab.registry.schema import AbTest, Feedback, ServedResponse
from tunelab.registry.stats import proportion_interval

SALT_VARIABLE = "TUNELAB_USER_SALT"
SALT_FILE = "user_salt"
ENDPOINTS = ("chat", "completion")
RATINGS = ("up", "down")
SCORES = range(1, 6)
POSITIVE_SCORE = 4  # a score of 4 or 5 counts as positive feedback, like a thumbs up
MIN_RATED_PER_ARM = 10  # below this, no verdict: a handful of clicks says little
ALPHA = 0.05
CONFIDENCE = 0.95
REQUIRED_COLUMNS = ("id", "endpoint", "model", "served_model", "prompt", "response", "prompt_tokens",
                    "completion_tokens", "latency_ms", "finish_reasons")
ARMS_EXAMPLE = "support@1:0.5,support@2:0.5"


# ---- who asked

def user_salt() -> bytes:
    """The HMAC key for user ids: ``$TUNELAB_USER_SALT``, else the salt file (made on first use, owner-only).
    Servers sharing a registry must share it, or one person gets a different subject id on each."""
    return secret(SALT_VARIABLE, SALT_FILE)


def user_hash(user: str) -> str:
    """The subject id of a request's ``user`` field: HMAC-SHA256 hex under the salt. It is what finds (and
    erases) one person's data later; without the salt it cannot be traced back to the user id."""
    if not user or not user.strip():
        raise TunelabError("an empty user field names nobody; store no user_hash for it")
    return hmac.new(user_salt(), user.encode(), hashlib.sha256).hexdigest()


# ---- responses and feedback

def record_responses(session: Session, rows: list[dict]) -> None:
    """Insert served responses in one statement (the server batches them); keys are column names,
    ``created`` defaults to now."""
    columns = set(ServedResponse.__table__.columns.keys())
    problems = []
    for position, row in enumerate(rows):
        unknown = sorted(set(row) - columns)
        missing = [name for name in REQUIRED_COLUMNS if row.get(name) is None]
        if unknown:
            problems.append(f"row {position}: unknown column(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"row {position}: missing {', '.join(missing)}")
        if row.get("endpoint") not in ENDPOINTS and "endpoint" not in missing:
            problems.append(f"row {position}: endpoint {row['endpoint']!r} (use {' or '.join(ENDPOINTS)})")
    if problems:
        raise TunelabError("cannot record served responses: " + "; ".join(problems))
    if rows:
        session.execute(insert(ServedResponse), rows)


def record_feedback(session: Session, response_id: str, *, rating: str | None = None, score: int | None = None,
                    corrected: str | None = None, comment: str | None = None, key_id: str | None = None,
                    user_hash: str | None = None) -> Feedback:
    """Feedback on a served response: a rating (up/down), a score (1-5), or both, with an optional corrected
    answer and comment. Without ``user_hash`` it belongs to whoever got the response."""
    response = session.get(ServedResponse, response_id)
    if response is None:
        raise TunelabError(f"no response {response_id!r}: feedback must name the id of a response this server "
                           f"gave (the completion's \"id\")")
    _check_judgement(rating, score)
    row = Feedback(response_id=response_id, rating=rating, score=score, corrected=corrected, comment=comment,
                   key_id=key_id, user_hash=user_hash if user_hash is not None else response.user_hash)
    session.add(row)
    session.flush()
    return row


def _check_judgement(rating, score) -> None:
    """Every problem with a rating/score pair, in one error."""
    problems = []
    if rating is None and score is None:
        problems.append("give a rating (up or down), a score (1 to 5), or both")
    if rating is not None and rating not in RATINGS:
        problems.append(f"rating {rating!r}: use up or down")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int) or score not in SCORES):
        problems.append(f"score {score!r}: use a whole number from 1 to 5")
    if problems:
        raise TunelabError("feedback: " + "; ".join(problems))


def feedback_rows(session: Session, since: datetime | None = None) -> list[dict]:
    """Feedback with the prompt and answer it judged, oldest first: the raw material for the next dataset
    version (corrected answers become targets, ratings select or drop rows)."""
    query = (select(Feedback, ServedResponse).join(ServedResponse, Feedback.response_id == ServedResponse.id)
             .order_by(Feedback.created, Feedback.id))
    if since is not None:
        query = query.where(Feedback.created >= _as_utc(since))
    return [{"feedback_id": f.id, "response_id": r.id, "created": _as_utc(f.created).isoformat(),
             "endpoint": r.endpoint, "prompt": r.prompt, "response": r.response, "corrected": f.corrected,
             "rating": f.rating, "score": f.score, "comment": f.comment, "model": r.model,
             "served_model": r.served_model, "model_version": r.model_version, "ab_test": r.ab_test,
             "arm": r.arm, "user_hash": f.user_hash}
            for f, r in session.execute(query).all()]


def _as_utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite gives back naive datetimes (stored as UTC), PostgreSQL aware ones."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# ---- A/B tests

def parse_arms(text: str) -> dict[str, float]:
    """``a:0.7,b:0.3`` -> {"a": 0.7, "b": 0.3}; ``a,b`` -> equal weights. The weight is after the last
    colon, so a name that holds a colon itself (run:abc) needs one: ``run:abc:1,run:def:1``."""
    arms: dict[str, float] = {}
    problems = []
    weighted, seen = [], set()
    for piece in (p.strip() for p in text.split(",")):
        name, colon, weight_text = piece.rpartition(":") if ":" in piece else (piece, "", "")
        name = name.strip()
        weighted.append(bool(colon))
        if not name:
            problems.append(f"{piece!r} has no model name")
            continue
        if name in seen:
            problems.append(f"{name!r} is given twice")
        seen.add(name)
        weight = 1.0
        if colon:
            try:
                weight = float(weight_text)
            except ValueError:
                problems.append(f"{piece!r}: weight {weight_text.strip()!r} is not a number")
                continue
            if not math.isfinite(weight) or weight <= 0:
                problems.append(f"{piece!r}: weight must be above 0")
                continue
        arms[name] = weight
    if any(weighted) and not all(weighted):
        problems.append("give a weight to every arm or to none")
    if problems:
        raise TunelabError(f"arms {text!r}: " + "; ".join(problems) + f" (use MODEL:WEIGHT,... e.g. {ARMS_EXAMPLE})")
    return arms


def start_ab_test(session: Session, name: str, arms: dict[str, float], created_by: str | None = None) -> AbTest:
    """Start splitting traffic between ``arms`` by weight (normalized to sum 1). An ended test's name may be
    used again: the new test replaces it, and its report counts only responses from the new start."""
    name = name.strip() if name else ""
    problems = [] if name else ["an A/B test needs a name"]
    if len(arms) < 2:
        problems.append(f"an A/B test needs at least 2 arms, got {len(arms)}")
    problems += [f"arm {arm!r}: weight {weight!r} must be a number above 0" for arm, weight in arms.items()
                 if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                 or weight <= 0]
    problems += ["an arm has an empty model name" for arm in arms if not arm or not arm.strip()]
    if problems:
        raise TunelabError(f"A/B test {name!r}: " + "; ".join(problems))
    total = sum(arms.values())
    normalized = {arm: weight / total for arm, weight in sorted(arms.items())}
    row = session.get(AbTest, name)
    if row is not None and row.ended is None:
        raise TunelabError(f"A/B test {name!r} is already running (since {_as_utc(row.created):%Y-%m-%d %H:%M}); "
                           f"end it first or pick another name")
    if row is None:
        row = AbTest(name=name)
        session.add(row)
    row.arms, row.created, row.ended, row.created_by = normalized, datetime.now(timezone.utc), None, created_by
    session.flush()
    return row


def end_ab_test(session: Session, name: str) -> AbTest:
    """Stop a test: traffic no longer splits, and its report stays as it was when it ended."""
    row = _find_test(session, name)
    if row.ended is None:
        row.ended = datetime.now(timezone.utc)
    return row


def active_ab_tests(session: Session) -> dict[str, dict[str, float]]:
    """Running tests: name -> arm -> weight. The server routes a request for any arm's model through these."""
    return {t.name: t.arms for t in session.scalars(select(AbTest).where(AbTest.ended.is_(None)))}


def list_ab_tests(session: Session) -> list[dict]:
    """Every test, running first, with its arms and the number of requests it served."""
    tests = session.scalars(select(AbTest).order_by(AbTest.ended.is_not(None), AbTest.created.desc())).all()
    return [{"name": t.name, "arms": t.arms, "active": t.ended is None, "created": _as_utc(t.created).isoformat(),
             "ended": _as_utc(t.ended).isoformat() if t.ended else None, "created_by": t.created_by,
             "requests": session.scalar(select(func.count()).select_from(ServedResponse).where(*_served_under(t)))}
            for t in tests]


def _find_test(session: Session, name: str) -> AbTest:
    row = session.get(AbTest, name)
    if row is None:
        known = session.scalars(select(AbTest.name).order_by(AbTest.name)).all()
        raise NotFoundError(f"no A/B test {name!r}; " + (f"known: {', '.join(known)}" if known else
                                                        "none has been started yet"))
    return row


def pick_arm(arms: dict[str, float], test_name: str, subject: str) -> str:
    """The arm ``subject`` (a user hash, else a key id) gets in ``test_name``: always the same one, and
    across many subjects in the share of the weights. The hash places the subject in [0, 1), and the arms,
    in sorted order, own consecutive slices as wide as their weights."""
    if not arms:
        raise TunelabError(f"A/B test {test_name!r} has no arms")
    digest = hashlib.sha256(f"{test_name}\0{subject}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2 ** 64
    total = sum(arms.values())
    reached = 0.0
    names = sorted(arms)
    for name in names:
        reached += arms[name] / total
        if point < reached:
            return name
    return names[-1]  # rounding left the last slice a hair short of 1


# ---- the A/B report

def ab_report(session: Session, name: str) -> dict:
    """Each arm's traffic, latency, tokens and feedback, a significance test of the difference in positive
    feedback (and in scores), and a verdict. A response counts once, by its latest feedback, so repeated
    clicks do not weigh twice and the tests see independent observations."""
    test = _find_test(session, name)
    responses = session.scalars(select(ServedResponse).where(*_served_under(test))).all()
    ids = [r.id for r in responses]
    latest, counts = _latest_feedback(session, ids), _feedback_counts(session, ids)
    by_arm = defaultdict(list)
    for response in responses:
        by_arm[response.arm].append(response)
    scores = {arm: [latest[r.id].score for r in by_arm[arm] if r.id in latest and latest[r.id].score is not None]
              for arm in sorted(test.arms)}
    arms = {arm: _arm_summary(test.arms[arm], by_arm[arm], latest, counts) for arm in sorted(test.arms)}
    tests = {"positive": _positive_test(arms), "score": _score_test(scores)}
    return {"name": test.name, "active": test.ended is None, "created": _as_utc(test.created).isoformat(),
            "ended": _as_utc(test.ended).isoformat() if test.ended else None, "arms": arms, "tests": tests,
            "difference": _rate_difference(arms) if len(arms) == 2 else None, "verdict": _verdict(arms, tests),
            "alpha": ALPHA, "min_rated_per_arm": MIN_RATED_PER_ARM}


def _served_under(test: AbTest) -> list:
    """Conditions for the responses served under this test since it (last) started, and until it ended."""
    conditions = [ServedResponse.ab_test == test.name, ServedResponse.arm.in_(list(test.arms)),
                  ServedResponse.created >= _as_utc(test.created)]
    if test.ended is not None:
        conditions.append(ServedResponse.created <= _as_utc(test.ended))
    return conditions


def _latest_feedback(session: Session, response_ids: list[str]) -> dict[str, Feedback]:
    latest = {}
    for chunk in _chunks(response_ids):
        for row in session.scalars(select(Feedback).where(Feedback.response_id.in_(chunk))
                                   .order_by(Feedback.created, Feedback.id)):
            latest[row.response_id] = row  # later rows overwrite earlier ones
    return latest


def _feedback_counts(session: Session, response_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for chunk in _chunks(response_ids):
        for response_id in session.scalars(select(Feedback.response_id).where(Feedback.response_id.in_(chunk))):
            counts[response_id] += 1
    return counts


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    """Slices small enough for any database's limit on bound parameters."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def is_positive(feedback: Feedback) -> bool | None:
    """Up is positive and down is not; without a rating a score of 4 or 5 is positive. None: not rated."""
    if feedback.rating is not None:
        return feedback.rating == "up"
    if feedback.score is not None:
        return feedback.score >= POSITIVE_SCORE
    return None


def _arm_summary(weight: float, responses: list[ServedResponse], latest: dict[str, Feedback],
                 counts: dict[str, int]) -> dict:
    latencies = np.array([r.latency_ms for r in responses], dtype=float)
    tokens = [r.completion_tokens for r in responses]
    judged = [latest[r.id] for r in responses if r.id in latest]
    verdicts = [v for v in (is_positive(f) for f in judged) if v is not None]
    scores = [f.score for f in judged if f.score is not None]
    requests, positive, rated = len(responses), sum(verdicts), len(verdicts)
    return {"weight": weight, "requests": requests,
            "mean_latency_ms": _float(latencies.mean()) if requests else None,
            "p50_latency_ms": _float(np.percentile(latencies, 50)) if requests else None,
            "p95_latency_ms": _float(np.percentile(latencies, 95)) if requests else None,
            "completion_tokens": sum(tokens), "mean_completion_tokens": _float(np.mean(tokens)) if tokens else None,
            "feedback": sum(counts[r.id] for r in responses),
            "feedback_rate": len(judged) / requests if requests else None,
            "rated": rated, "positive": positive, "positive_rate": positive / rated if rated else None,
            "positive_interval": list(proportion_interval(positive, rated, CONFIDENCE)) if rated else None,
            "scored": len(scores), "mean_score": _float(np.mean(scores)) if scores else None}


def _float(value) -> float | None:
    """A plain float for JSON; NaN (a test with no variation to measure) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


def _positive_test(arms: dict[str, dict]) -> dict | None:
    """p-value of a difference in positive feedback between arms with ratings: Fisher's exact test for
    2 arms, a chi-square test of independence for more. None until at least 2 arms have ratings."""
    table = [[a["positive"], a["rated"] - a["positive"]] for a in arms.values() if a["rated"]]
    if len(table) < 2:
        return None
    if len(arms) == 2:
        return {"method": "fisher-exact", "p_value": _float(stats.fisher_exact(table).pvalue)}
    return {"method": "chi-square", "p_value": _chi_square_p(table)}


def _score_test(scores: dict[str, list[int]]) -> dict | None:
    """Welch's t-test on the 1-5 scores of 2 arms, each with at least 2 scores (no equal-variance
    assumption: one model may split opinions more than the other)."""
    if len(scores) != 2 or any(len(s) < 2 for s in scores.values()):
        return None
    first, second = scores.values()
    if np.var(first) == 0 and np.var(second) == 0:  # no spread to measure a difference against
        return {"method": "welch-t", "p_value": 1.0 if np.mean(first) == np.mean(second) else None}
    return {"method": "welch-t", "p_value": _float(stats.ttest_ind(first, second, equal_var=False).pvalue)}


def _chi_square_p(table: list[list[int]]) -> float:
    """All positive or all negative in every arm: nothing differs, p = 1 (scipy refuses a zero column)."""
    if any(sum(column) == 0 for column in zip(*table)):
        return 1.0
    return _float(stats.chi2_contingency(np.array(table)).pvalue)


def _rate_difference(arms: dict[str, dict]) -> dict | None:
    """The first arm's positive rate minus the second's, with its 95% interval."""
    (first, a), (second, b) = arms.items()
    if not a["rated"] or not b["rated"]:
        return None
    low, high = rate_difference_interval(a["positive"], a["rated"], b["positive"], b["rated"], CONFIDENCE)
    return {"of": f"{first} - {second}", "positive_rate": a["positive_rate"] - b["positive_rate"],
            "interval": [low, high], "confidence": CONFIDENCE, "method": "newcombe-hybrid-score"}


def rate_difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                             confidence: float = 0.95) -> tuple[float, float]:
    """Interval of ``successes_a/n_a - successes_b/n_b`` for independent samples: Newcombe's hybrid score
    interval (1998, method 10), built from each rate's Wilson interval, so it stays sensible near 0 and 1
    and for small samples, where the textbook normal interval does not."""
    share_a, share_b = successes_a / n_a, successes_b / n_b
    low_a, high_a = proportion_interval(successes_a, n_a, confidence)
    low_b, high_b = proportion_interval(successes_b, n_b, confidence)
    difference = share_a - share_b
    return (difference - math.sqrt((share_a - low_a) ** 2 + (high_b - share_b) ** 2),
            difference + math.sqrt((high_a - share_a) ** 2 + (share_b - low_b) ** 2))


def _verdict(arms: dict[str, dict], tests: dict) -> str:
    short = [f"{arm} has {a['rated']}" for arm, a in arms.items() if a["rated"] < MIN_RATED_PER_ARM]
    if short:
        return (f"not enough feedback yet: {', '.join(short)} rated responses "
                f"(at least {MIN_RATED_PER_ARM} per arm are needed)")
    p_value = tests["positive"]["p_value"]  # every arm has ratings here, so the test ran
    if p_value >= ALPHA:
        return f"no significant difference (p={p_value:.3g})"
    best = max(arms, key=lambda arm: arms[arm]["positive_rate"])
    if len(arms) == 2:
        return f"{best} is better (p={p_value:.3g})"
    return f"the arms differ (p={p_value:.3g}); {best} has the highest positive rate"
