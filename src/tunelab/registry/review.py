"""Blind human review: reviewers pick the better of two anonymised answers, stored as preference pairs.

Metrics such as accuracy or token F1 say little about free-text answers a person would prefer. Here a
reviewer sees one held-out prompt and two answers to it, from two models (a run's base and tuned model, the
tuned models of two runs, or two registered model versions), in a random left/right order and without their
names, and picks the better one or a tie. The answers are the ones the registry already holds from evaluation
(per-item results), so no model is loaded.

Each pick is kept twice over:

- as a vote, for ``review_results``: per pair of models, the win rate of one over the other on the decisive
  votes with a 95% Wilson interval, and the share of ties;
- as a preference pair (prompt, chosen, rejected), for ``export_preferences``: a JSON-lines file in the
  layout TRL's preference trainers (DPO and kin) read.

Prompts and answers are user content: the tables seal them (``sealed.py``) and the export is written with
``security.files``, so both are encrypted when a master key is set. Results read only the plaintext columns
(model refs and winners), so they work without the key. Models are named by refs: ``run:<id>`` (a run's
tuned model), ``base:<model>`` (the base model it was tuned from) or ``NAME@VERSION`` (a registered version).
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.ingest import base_key, tuned_key
from tunelab.registry.models import resolve
from tunelab.registry.queries import find_run, items_of, latest_evaluation, run_folder_rows
from tunelab.registry.schema import Evaluation, ReviewPair, ReviewPreference, Run, now
from tunelab.registry.stats import proportion_interval
from tunelab.runs.folder import RunFolder
from tunelab.security.files import write_jsonl

CHOICES = ("left", "right", "tie")
CONFIDENCE = 0.95
EXPORT_FIELDS = ("prompt", "chosen", "rejected", "chosen_model", "rejected_model")
MAX_REVIEWER = 200  # the reviewer columns' length
PAIR_ID_BYTES = 16  # 22 characters of urlsafe base64


@dataclass(frozen=True)
class Item:
    """One held-out prompt with the two sides' answers to it."""

    item_hash: str
    prompt: str
    first_answer: str
    second_answer: str


@dataclass
class Sides:
    """What a review compares: two model refs and the items fit to judge, with counts of those left out."""

    first: str
    second: str
    items: list[Item]
    identical: int  # items both sides answered the same way: nothing to judge
    unprompted: int  # shared items without a prompt text (the run folder is gone or lacks it)


@dataclass(frozen=True)
class _Side:
    ref: str
    run: Run
    arm: str  # tuned or base


# ---- what to compare

def sides_of(session: Session, first: str, second: str | None = None) -> Sides:
    """The two sides to compare and the items fit to judge.

    ``first`` alone (a run as ``find_run`` accepts it, or ``NAME@VERSION`` / ``NAME@ALIAS``) compares that
    run's tuned answers (first) with its base model's answers (second); with ``second``, the tuned answers of
    both. Only items both sides answered and whose prompt is known are used; identical answers are skipped.
    """
    a = _side(session, first)
    b = _side(session, second) if second else _base_side(a.run)
    if (a.run.id, a.arm) == (b.run.id, b.arm):
        raise TunelabError(f"both sides are the same model ({a.ref}, run {a.run.name}): give two different runs "
                           f"or model versions")
    answers_a = _answers(session, a)
    answers_b = _answers(session, b, eval_set=_eval_set(session, a))
    shared = [h for h in answers_a if h in answers_b]
    if not shared:
        raise TunelabError(f"{a.ref} and {b.ref} answered no held-out item in common (different eval sets?); "
                           f"nothing to review")
    prompts = _prompts([a.run, b.run])
    items, identical, unprompted = [], 0, 0
    for item_hash in shared:
        prompt, one, other = prompts.get(item_hash), answers_a[item_hash], answers_b[item_hash]
        if not prompt:
            unprompted += 1
        elif one.strip() == other.strip():
            identical += 1
        else:
            items.append(Item(item_hash, prompt, one, other))
    return Sides(a.ref, b.ref, items, identical, unprompted)


def _side(session: Session, ref: str) -> _Side:
    """A run's tuned model from a run ref (folder, id, ``run:<id>`` or name) or a ``NAME@VERSION`` model ref."""
    if "@" in ref and not RunFolder.is_run(ref):
        model, version = resolve(session, ref)
        return _Side(f"{model.name}@{version.version}", session.get(Run, version.run_id), "tuned")
    run = find_run(session, ref.removeprefix("run:"))
    return _Side(tuned_key(run.id), run, "tuned")


def _base_side(run: Run) -> _Side:
    if not run.base_model:
        raise TunelabError(f"run {run.name} ({run.id}) names no base model; give a second run or model to compare "
                           f"with")
    return _Side(base_key(run.base_model), run, "base")


def _answers(session: Session, side: _Side, eval_set: str | None = None) -> dict[str, str]:
    """The side's answers by item hash, in the order it was evaluated; a base side's on ``eval_set`` (the
    other side's items) where it has them."""
    evaluation = _evaluation(session, side, eval_set)
    if evaluation is None:
        run = f"run {side.run.name} ({side.run.id})"
        if side.arm == "base":
            raise TunelabError(f"{run} has no per-item answers of its base model ({side.ref}); evaluate the base "
                               f"model too, or compare with another run")
        raise TunelabError(f"{run} has no per-item answers (it did not finish, or was not evaluated); nothing "
                           f"to review")
    return {h: item.prediction for h, item in items_of(session, evaluation).items() if item.prediction is not None}


def _evaluation(session: Session, side: _Side, eval_set: str | None) -> Evaluation | None:
    """The newest tuned evaluation of the side's run. For a base side: the base evaluation that run made, else
    (another run of the same base model, items and code replaced it) the newest of that base model on
    ``eval_set``, else the newest of that base model."""
    if side.arm == "tuned":
        return latest_evaluation(session, tuned_key(side.run.id), arm="tuned")
    own = session.scalars(select(Evaluation).where(Evaluation.run_id == side.run.id, Evaluation.arm == "base")
                          .order_by(Evaluation.created.desc(), Evaluation.id.desc())).first()
    return (own or latest_evaluation(session, side.ref, arm="base", eval_set_hash=eval_set)
            or latest_evaluation(session, side.ref, arm="base"))


def _eval_set(session: Session, side: _Side) -> str | None:
    evaluation = _evaluation(session, side, None)
    return evaluation.eval_set_hash if evaluation is not None else None


def _prompts(runs: list[Run]) -> dict[str, str]:
    """The held-out input texts by item hash, from the runs' folders (predictions.jsonl)."""
    prompts: dict[str, str] = {}
    for run in runs:
        for item_hash, row in run_folder_rows(run).items():
            text = row.get("input")
            if isinstance(text, str) and text.strip():
                prompts.setdefault(item_hash, text)
    return prompts


# ---- handing pairs out

def new_pairs(session: Session, first: str, second: str | None = None, count: int = 10, seed: int | None = None,
              reviewer: str | None = None) -> list[dict]:
    """``count`` new review pairs of ``first`` and ``second`` (see ``sides_of``), stored and returned as a
    reviewer may see them: {"pair_id", "prompt", "left", "right"}, never which model gave which answer.

    Items come in random order, those never drawn for these two models first, then those drawn but not yet
    decided, and decided ones only when no other remains; each pair's left/right order is random. ``seed``
    makes both reproducible (pair ids stay unguessable). ``reviewer`` (a key id or name) reserves the pairs
    for that reviewer.
    """
    if count < 1:
        raise TunelabError(f"count must be at least 1, got {count}")
    reviewer = _checked_reviewer(reviewer) if reviewer is not None else None
    sides = sides_of(session, first, second)
    if not sides.items:
        raise TunelabError(_nothing_to_judge(sides))
    rng = random.Random(seed) if seed is not None else secrets.SystemRandom()
    drawn = _draw(session, sides, count, rng)
    pairs = [_pair(sides, item, rng.choice(("first", "second")), reviewer) for item in drawn]
    session.add_all(pairs)
    session.flush()
    return [shown(pair) for pair in pairs]


def _nothing_to_judge(sides: Sides) -> str:
    left_out = []
    if sides.identical:
        left_out.append(f"{sides.identical} with identical answers")
    if sides.unprompted:
        left_out.append(f"{sides.unprompted} without a prompt (run folder gone?)")
    return f"no items to review between {sides.first} and {sides.second}: {' and '.join(left_out)}"


def _draw(session: Session, sides: Sides, count: int, rng: random.Random) -> list[Item]:
    """``count`` items at random, fresh ones before undecided ones before decided ones."""
    tiers = _drawn_before(session, sides.first, sides.second)
    order = list(sides.items)
    rng.shuffle(order)
    order.sort(key=lambda item: tiers.get(item.item_hash, 0))  # stable: random within a tier
    return order[:count]


def _drawn_before(session: Session, first: str, second: str) -> dict[str, int]:
    """Items already in pairs of these two models (either order): 1 when only handed out, 2 when decided."""
    rows = session.execute(select(ReviewPair.item_hash, ReviewPair.decided)
                           .where(_between(ReviewPair, first, second))).all()
    tiers: dict[str, int] = {}
    for item_hash, decided in rows:
        tiers[item_hash] = max(tiers.get(item_hash, 0), 2 if decided is not None else 1)
    return tiers


def _between(table, first: str, second: str):
    return or_(and_(table.first_model == first, table.second_model == second),
               and_(table.first_model == second, table.second_model == first))


def _pair(sides: Sides, item: Item, left: str, reviewer: str | None) -> ReviewPair:
    return ReviewPair(id=secrets.token_urlsafe(PAIR_ID_BYTES), first_model=sides.first, second_model=sides.second,
                      item_hash=item.item_hash, prompt=item.prompt, first_answer=item.first_answer,
                      second_answer=item.second_answer, left=left, reviewer=reviewer)


def shown(pair: ReviewPair) -> dict:
    """A pair as its reviewer sees it: the prompt and the two answers in display order, nothing else."""
    first_left = pair.left == "first"
    return {"pair_id": pair.id, "prompt": pair.prompt,
            "left": pair.first_answer if first_left else pair.second_answer,
            "right": pair.second_answer if first_left else pair.first_answer}


# ---- recording a choice

def record_choice(session: Session, pair_id: str, choice: str, reviewer: str) -> dict:
    """Record ``reviewer``'s ``choice`` ("left", "right" or "tie", as shown) on a pair, once; returns
    {"pair_id", "choice", "decided"}, still without naming the models."""
    choice = _checked_choice(choice)
    reviewer = _checked_reviewer(reviewer)
    pair = session.scalar(select(ReviewPair).where(ReviewPair.id == pair_id).with_for_update())
    if pair is None:
        raise NotFoundError(f"no review pair {pair_id!r}; ask for new pairs")
    if pair.decided is not None:
        raise TunelabError(f"review pair {pair_id} was already decided; ask for a new pair")
    if pair.reviewer is not None and pair.reviewer != reviewer:
        raise TunelabError(f"review pair {pair_id} was handed to another reviewer; ask for your own pairs")
    pair.decided = now()
    session.add(_preference(pair, choice, reviewer))
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:  # another vote on the same pair got in first
        raise TunelabError(f"review pair {pair_id} was already decided; ask for a new pair") from None
    return {"pair_id": pair.id, "choice": choice, "decided": pair.decided.isoformat()}


def _checked_choice(choice: str) -> str:
    normal = str(choice).strip().lower()
    if normal not in CHOICES:
        raise TunelabError(f"choice {choice!r}: pick left, right or tie")
    return normal


def _checked_reviewer(reviewer: str) -> str:
    name = str(reviewer or "").strip()
    if not name or len(name) > MAX_REVIEWER:
        raise TunelabError(f"reviewer {reviewer!r}: give an API key id or a name of 1 to {MAX_REVIEWER} characters")
    return name


def winner_of(left: str, choice: str) -> str:
    """The side ("first", "second" or "tie") that a choice as shown picks, given the side shown left."""
    if choice == "tie":
        return "tie"
    right = "second" if left == "first" else "first"
    return left if choice == "left" else right


def _preference(pair: ReviewPair, choice: str, reviewer: str) -> ReviewPreference:
    winner = winner_of(pair.left, choice)
    chosen, rejected = pair.first_answer, pair.second_answer
    if winner == "second":
        chosen, rejected = rejected, chosen
    return ReviewPreference(pair_id=pair.id, reviewer=reviewer, choice=choice, winner=winner,
                            first_model=pair.first_model, second_model=pair.second_model, prompt=pair.prompt,
                            chosen=chosen, rejected=rejected)


# ---- results

@dataclass
class _Tally:
    first: str
    second: str
    first_wins: int = 0
    second_wins: int = 0
    ties: int = 0

    def add(self, first: str, winner: str) -> None:
        """One vote, whose ``first`` may be this tally's second (pairs drawn the other way round)."""
        if winner == "tie":
            self.ties += 1
        elif (winner == "first") == (first == self.first):
            self.first_wins += 1
        else:
            self.second_wins += 1


def review_results(session: Session) -> list[dict]:
    """Per pair of models (in the order of their first vote): votes, wins of each, ties, the first's win rate
    over the second on decisive votes with its 95% Wilson interval, the share of ties, and a verdict. Reads
    no sealed column, so it works without the master key."""
    votes = session.execute(select(ReviewPreference.first_model, ReviewPreference.second_model,
                                   ReviewPreference.winner).order_by(ReviewPreference.id)).all()
    tallies: dict[frozenset, _Tally] = {}
    for first, second, winner in votes:
        tally = tallies.setdefault(frozenset((first, second)), _Tally(first, second))
        tally.add(first, winner)
    return [_result(tally, model_label(session, tally.first), model_label(session, tally.second))
            for tally in tallies.values()]


def model_label(session: Session, ref: str) -> str:
    """A model ref as people name it: ``run:<id>`` -> the run's name, ``base:<model>`` -> "base (<model>)"."""
    kind, _, value = ref.partition(":")
    if kind == "run" and value:
        run = session.get(Run, value)
        return run.name if run is not None else ref
    if kind == "base" and value:
        return f"base ({Path(value).name or value})"
    return ref


def _result(tally: _Tally, first_label: str, second_label: str) -> dict:
    decisive = tally.first_wins + tally.second_wins
    votes = decisive + tally.ties
    interval = proportion_interval(tally.first_wins, decisive, CONFIDENCE) if decisive else None
    return {"first": tally.first, "second": tally.second, "n": votes, "first_wins": tally.first_wins,
            "second_wins": tally.second_wins, "ties": tally.ties, "decisive": decisive,
            "win_rate": tally.first_wins / decisive if decisive else None,
            "interval": list(interval) if interval else None, "tie_share": tally.ties / votes,
            "first_label": first_label, "second_label": second_label,
            "verdict": _verdict(tally, interval, first_label, second_label)}


def _verdict(tally: _Tally, interval: tuple[float, float] | None, first: str, second: str) -> str:
    decisive = tally.first_wins + tally.second_wins
    if interval is None:
        return f"no decisive votes yet ({tally.ties} ties)"
    low, high = interval
    if low > 0.5:
        return (f"{first} preferred over {second}: {tally.first_wins} of {decisive} decisive votes "
                f"(95% CI {low:.0%}-{high:.0%})")
    if high < 0.5:
        return (f"{second} preferred over {first}: {tally.second_wins} of {decisive} decisive votes "
                f"(95% CI {1 - high:.0%}-{1 - low:.0%})")
    return (f"no clear preference: {first} won {tally.first_wins} of {decisive} decisive votes "
            f"(95% CI {low:.0%}-{high:.0%} includes 50%)")


def format_results(results: list[dict]) -> str:
    """``review_results`` as a table for the terminal, one line per pair of models, then each verdict."""
    if not results:
        return "no blind reviews recorded yet (the dashboard's Review page records them)"
    lines = [f"{'first':<28} {'second':<28} {'votes':>5} {'wins':>9} {'ties':>4} {'win rate (95% CI)':>20}"]
    for r in results:
        rate = "-" if r["win_rate"] is None else f"{r['win_rate']:.0%} ({r['interval'][0]:.0%}-{r['interval'][1]:.0%})"
        first, second = r.get("first_label", r["first"]), r.get("second_label", r["second"])
        lines.append(f"{first[:28]:<28} {second[:28]:<28} {r['n']:>5} "
                     f"{str(r['first_wins']) + '-' + str(r['second_wins']):>9} {r['ties']:>4} {rate:>20}")
    return "\n".join(lines + [""] + [r["verdict"] for r in results])


# ---- preference pairs

def preference_rows(session: Session, include_ties: bool = False) -> list[dict]:
    """Every recorded preference, oldest first, as {"prompt", "chosen", "rejected", "chosen_model",
    "rejected_model", "tie"}; ties (where chosen is simply the first side) only with ``include_ties``."""
    query = select(ReviewPreference).order_by(ReviewPreference.id)
    if not include_ties:
        query = query.where(ReviewPreference.winner != "tie")
    return [_row(preference) for preference in session.scalars(query)]


def _row(preference: ReviewPreference) -> dict:
    models = (preference.first_model, preference.second_model)
    chosen_model, rejected_model = models[::-1] if preference.winner == "second" else models
    return {"prompt": preference.prompt, "chosen": preference.chosen, "rejected": preference.rejected,
            "chosen_model": chosen_model, "rejected_model": rejected_model, "tie": preference.winner == "tie"}


def export_row(row: dict) -> dict:
    """A ``preference_rows`` row as written out: the export fields, and ``"tie": true`` on a tie."""
    return {field: row[field] for field in EXPORT_FIELDS} | ({"tie": True} if row["tie"] else {})


def export_preferences(session: Session, out_path: str | Path, include_ties: bool = False) -> int:
    """Write the decisive preferences as JSON lines {"prompt", "chosen", "rejected", "chosen_model",
    "rejected_model"} (TRL's preference layout), atomically and encrypted when a master key is set; returns
    how many rows were written. ``include_ties``: tied pairs too, marked ``"tie": true``."""
    rows = [export_row(row) for row in preference_rows(session, include_ties)]
    try:
        write_jsonl(out_path, rows)
    except OSError as exc:
        raise TunelabError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    return len(rows)
