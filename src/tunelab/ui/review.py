"""The Review pages: blind human review of two models' answers, its results, and the preference pairs it yields.

A reviewer (REVIEW permission) picks what to compare (one run's tuned model against its base model, or two
runs or registered model versions) and how many pairs; ``registry/review.py`` draws the pairs, reserved for
the reviewer's key. Each pair is shown as a held-out prompt and two answers, "A" and "B", in a random order
and without the models' names: the page, its HTML and its URLs name only the random pair ids, so nothing
tells the reviewer which model wrote which answer before the choice. The state is the registry's (a pair is
decided or not), the URL only lists the pair ids: a reload, or coming back later, continues where it stopped.
Only when every pair of a review is decided does the summary say which model was A and which was B.

The results (win rate with its 95% interval per pair of models) are for every role that reads runs; the
preference pairs themselves (prompts and answers: user content) only for reviewers.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy import select

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.audit_trail import record
from tunelab.registry.models import list_models, show_model
from tunelab.registry.queries import list_runs
from tunelab.registry.review import (export_row, model_label, new_pairs, preference_rows, record_choice,
                                     review_results, shown)
from tunelab.registry.schema import ReviewPair, ReviewPreference
from tunelab.security.roles import READ_RUNS, REVIEW
from tunelab.ui.render import page
from tunelab.ui.sessions import Session, needs

router = APIRouter()

DEFAULT_PAIRS = 10
MAX_PAIRS = 50  # one review's pair ids travel in its URL
PAIR_ID = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
CHOICE_LABELS = {"left": "A", "right": "B", "tie": "Tie"}


def reviewer_of(session: Session) -> str:
    """Whom the pairs are reserved for: the session's key id (its name on a server without keys)."""
    return session.principal.key_id or session.principal.name


def review_url(pair_ids: list[str]) -> str:
    return "/ui/review/session?" + urlencode({"pairs": ",".join(pair_ids)})


def parse_pair_ids(pairs: str) -> list[str]:
    """The comma-separated pair ids of a review URL, checked (a mangled link is one clear line)."""
    ids = [part.strip() for part in pairs.split(",") if part.strip()]
    if not ids:
        raise TunelabError("this review link names no pairs; start a review on the Review page")
    if len(ids) > MAX_PAIRS or not all(PAIR_ID.match(pair_id) for pair_id in ids):
        raise TunelabError("this review link is damaged (pair ids are cut or altered); start a review on the "
                           "Review page")
    return list(dict.fromkeys(ids))


def parse_count(count: str) -> int:
    try:
        number = int(count)
    except ValueError:
        raise TunelabError(f"number of pairs {count!r}: give a whole number from 1 to {MAX_PAIRS}") from None
    if not 1 <= number <= MAX_PAIRS:
        raise TunelabError(f"number of pairs {number}: give a whole number from 1 to {MAX_PAIRS}")
    return number


# ---- choosing what to compare

def start_choices(registry) -> dict:
    """The start form's options: every run (by id) and every registered model version (NAME@VERSION)."""
    with registry.session() as db:
        runs = [{"value": run["id"], "label": f"{run['name']} · {run['status']} · {run['id'][:8]}"}
                for run in list_runs(db)]
        versions = [{"value": f"{model['name']}@{version['version']}",
                     "label": f"{model['name']}@{version['version']} · run {version['run']}"}
                    for model in list_models(db) for version in show_model(db, model["name"])["versions"]]
    return {"runs": runs, "versions": versions}


def waiting_pairs(registry, reviewer: str) -> list[str]:
    """The ids of the pairs handed to ``reviewer`` and not decided yet, oldest first (at most one review's)."""
    with registry.session() as db:
        return list(db.scalars(select(ReviewPair.id).where(ReviewPair.reviewer == reviewer,
                                                           ReviewPair.decided.is_(None))
                               .order_by(ReviewPair.created, ReviewPair.id).limit(MAX_PAIRS)))


def start_review(registry, first: str, second: str, count: int, reviewer: str) -> list[str]:
    with registry.session() as db:
        pairs = new_pairs(db, first, second or None, count=count, reviewer=reviewer)
    return [pair["pair_id"] for pair in pairs]


async def render_start(request: Request, session: Session, error: str | None = None, status_code: int = 200,
                       form: dict | None = None):
    """The start form (with the last form's values and its error, if any), and a link back to the pairs still
    waiting for this reviewer."""
    registry = request.app.state.ui.registry
    choices = await anyio.to_thread.run_sync(start_choices, registry)
    waiting = await anyio.to_thread.run_sync(waiting_pairs, registry, reviewer_of(session))
    form = {"first": "", "second": "", "count": DEFAULT_PAIRS} | (form or {})
    return page(request, "review.html", session, status_code=status_code, title="Blind review", error=error,
                form=form, max_pairs=MAX_PAIRS, waiting=len(waiting),
                continue_url=review_url(waiting) if waiting else None, **choices)


@router.get("/ui/review")
async def review_home(request: Request, session: Session = Depends(needs(REVIEW))):
    return await render_start(request, session)


@router.post("/ui/review/start")
async def review_start(request: Request, first: str = Form(""), second: str = Form(""), count: str = Form(""),
                       session: Session = Depends(needs(REVIEW))):
    form = {"first": first, "second": second, "count": count}
    try:
        if not first.strip():
            raise TunelabError("choose a run or model version to review")
        pair_ids = await anyio.to_thread.run_sync(start_review, request.app.state.ui.registry, first.strip(),
                                                  second.strip(), parse_count(count.strip() or str(DEFAULT_PAIRS)),
                                                  reviewer_of(session))
    except TunelabError as error:
        return await render_start(request, session, error=str(error).splitlines()[0], status_code=400, form=form)
    return RedirectResponse(review_url(pair_ids), status_code=303)


# ---- judging pairs

def review_state(registry, pair_ids: list[str], reviewer: str) -> dict:
    """Where a review stands: the first undecided pair as the reviewer may see it (no model named), or,
    once all are decided, the summary that reveals the models."""
    with registry.session() as db:
        pairs = {pair.id: pair for pair in db.scalars(select(ReviewPair).where(ReviewPair.id.in_(pair_ids)))}
        missing = [pair_id for pair_id in pair_ids if pair_id not in pairs]
        if missing:
            raise NotFoundError(f"no review pair {missing[0]!r} (the link is wrong, or the registry was reset); "
                                f"start a new review")
        ordered = [pairs[pair_id] for pair_id in pair_ids]
        if any(pair.reviewer not in (None, reviewer) for pair in ordered):
            raise TunelabError("these pairs were handed to another reviewer; start a review of your own")
        decided = sum(pair.decided is not None for pair in ordered)
        pending = next((pair for pair in ordered if pair.decided is None), None)
        state = {"total": len(ordered), "decided": decided, "pair_ids": ",".join(pair_ids)}
        if pending is not None:
            return state | {"pair": shown(pending), "position": decided + 1}
        return state | {"summary": summary_of(db, ordered)}


def summary_of(db, pairs: list[ReviewPair]) -> dict:
    """A finished review: each pair's choice with the models behind A and B revealed, wins per model, and
    what a "judge more of the same" form needs."""
    choices = {p.pair_id: p for p in db.scalars(select(ReviewPreference)
                                               .where(ReviewPreference.pair_id.in_([pair.id for pair in pairs])))}
    labels = {ref: model_label(db, ref) for pair in pairs for ref in (pair.first_model, pair.second_model)}
    rows = [revealed(number, pair, choices.get(pair.id), labels) for number, pair in enumerate(pairs, 1)]
    wins = {ref: sum(row["winner_ref"] == ref for row in rows) for ref in labels}
    return {"rows": rows, "wins": [(labels[ref], count) for ref, count in sorted(wins.items(), key=lambda w: -w[1])],
            "ties": sum(row["choice"] == "Tie" for row in rows), "more": same_again(pairs), "count": len(pairs)}


def revealed(number: int, pair: ReviewPair, preference: ReviewPreference | None, labels: dict[str, str]) -> dict:
    """One judged pair with its models named: who was A, who was B, what was chosen, which model that preferred."""
    a, b = (pair.first_model, pair.second_model) if pair.left == "first" else (pair.second_model, pair.first_model)
    winner = None
    if preference is not None and preference.winner != "tie":
        winner = pair.first_model if preference.winner == "first" else pair.second_model
    return {"number": number, "prompt": pair.prompt, "a": labels[a], "b": labels[b], "winner_ref": winner,
            "winner": labels[winner] if winner else None,
            "choice": CHOICE_LABELS[preference.choice] if preference else "by someone else"}


def same_again(pairs: list[ReviewPair]) -> dict | None:
    """The start form's values that compare the same two models again (None when the pairs mix models)."""
    models = {(pair.first_model, pair.second_model) for pair in pairs}
    if len(models) != 1:
        return None
    first, second = models.pop()
    return {"first": first.removeprefix("run:"),
            "second": "" if second.startswith("base:") else second.removeprefix("run:")}


def choose(registry, pair_id: str, choice: str, reviewer: str) -> None:
    with registry.session() as db:
        record_choice(db, pair_id, choice, reviewer)


async def render_refusal(request: Request, session: Session, error: TunelabError, back: str | None = None):
    status = 404 if isinstance(error, NotFoundError) else 409
    return page(request, "review_error.html", session, status_code=status, title="Blind review",
                message=str(error).splitlines()[0], back=back)


@router.get("/ui/review/session")
async def review_session(request: Request, pairs: str = "", session: Session = Depends(needs(REVIEW))):
    try:
        state = await anyio.to_thread.run_sync(review_state, request.app.state.ui.registry, parse_pair_ids(pairs),
                                               reviewer_of(session))
    except TunelabError as error:
        return await render_refusal(request, session, error)
    title = "Blind review: summary" if "summary" in state else f"Blind review: pair {state['position']}"
    return page(request, "review_pair.html", session, title=title, **state)


@router.post("/ui/review/choose")
async def review_choose(request: Request, pair_id: str = Form(""), choice: str = Form(""), pairs: str = Form(""),
                        session: Session = Depends(needs(REVIEW))):
    try:
        back = review_url(parse_pair_ids(pairs)) if pairs else None
    except TunelabError:
        back = None
    try:
        await anyio.to_thread.run_sync(choose, request.app.state.ui.registry, pair_id, choice, reviewer_of(session))
    except TunelabError as error:
        return await render_refusal(request, session, error, back)
    return RedirectResponse(back or "/ui/review/results", status_code=303)


# ---- results and the preference pairs

def results_rows(registry) -> list[dict]:
    """``review_results`` (models named as people read them), each with the way its interval leans."""
    with registry.session() as db:
        return [row | {"leaning": leaning(row["interval"])} for row in review_results(db)]


def leaning(interval: list[float] | None) -> str:
    """Which way the 95% interval of the first model's win rate points: first, second, or open."""
    if interval is None:
        return "open"
    low, high = interval
    return "first" if low > 0.5 else "second" if high < 0.5 else "open"


@router.get("/ui/review/results")
async def review_results_page(request: Request, session: Session = Depends(needs(READ_RUNS))):
    rows = await anyio.to_thread.run_sync(results_rows, request.app.state.ui.registry)
    return page(request, "review_results.html", session, title="Review results", rows=rows)


def export_rows(registry, include_ties: bool) -> list[dict]:
    """The preference pairs in the layout ``tunelab review export`` writes (TRL's), ties marked."""
    with registry.session() as db:
        rows = preference_rows(db, include_ties)
    return [export_row(row) for row in rows]


@router.get("/ui/review/preferences.jsonl")
async def review_preferences(request: Request, ties: bool = False, session: Session = Depends(needs(REVIEW))):
    state = request.app.state.ui
    try:
        rows = await anyio.to_thread.run_sync(export_rows, state.registry, ties)
    except TunelabError as error:
        return await render_refusal(request, session, error)
    actor = f"key:{reviewer_of(session)}"
    await anyio.to_thread.run_sync(lambda: record("ui.review.export", actor, registry=state.registry,
                                                  rows=len(rows), ties=ties))
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    name = "review-preferences-with-ties.jsonl" if ties else "review-preferences.jsonl"
    return StreamingResponse(lines, media_type="application/jsonl; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})
