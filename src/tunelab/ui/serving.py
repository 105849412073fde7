"""A/B tests and feedback: how served models compare on live traffic, and what people said about answers.

Everything here is read from the registry, where the server writes its responses, feedback and A/B
tests (``registry/serving.py``), not asked of the server: the page works with the dashboard on its own
and shows tests that have ended or a server that is down. The server writes responses in batches, so
the newest answer can take a second to appear.

Each A/B test shows its arms side by side (requests, positive rate with its 95% interval, latency,
tokens, scores) and the report's verdict in words. The feedback queue lists the latest judged answers,
newest first, with the prompt and the answer (user content: escaped, never marked safe), and can be
narrowed to the negative ones, which are what the next dataset version should fix.
"""

from __future__ import annotations

import math

import anyio
from fastapi import APIRouter, Depends, Query, Request

from tunelab.registry.serving import POSITIVE_SCORE, ab_report, feedback_rows, list_ab_tests
from tunelab.security.roles import MONITOR
from tunelab.ui.render import page
from tunelab.ui.sessions import Session, needs

router = APIRouter()

PAGE_SIZE = 20


def ab_overview(registry) -> list[dict]:
    """Every A/B test, running first, each with its report."""
    with registry.session() as db:
        return [{**test, "report": ab_report(db, test["name"])} for test in list_ab_tests(db)]


def is_negative(row: dict) -> bool:
    """A thumbs down, or without a rating a score below the positive ones."""
    if row["rating"] is not None:
        return row["rating"] == "down"
    return row["score"] is not None and row["score"] < POSITIVE_SCORE


def asked(prompt) -> str:
    """What the person asked: the last user turn of a chat, the (first) prompt of a text completion."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        turns = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
        return turns[-1] if turns else str(prompt[-1].get("content") or "")
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt else ""
    return str(prompt or "")


def answered(response) -> str:
    return str(response[0]) if isinstance(response, list) and response else str(response or "")


def feedback_queue(registry, page_number: int, negative_only: bool) -> dict:
    """One page of feedback, newest first, and the counts over all of it."""
    with registry.session() as db:
        rows = feedback_rows(db)
    rows.reverse()
    counts = {"all": len(rows), "up": sum(r["rating"] == "up" for r in rows),
              "negative": sum(is_negative(r) for r in rows)}
    shown = [r for r in rows if is_negative(r)] if negative_only else rows
    pages = max(1, math.ceil(len(shown) / PAGE_SIZE))
    page_number = min(max(1, page_number), pages)
    window = shown[(page_number - 1) * PAGE_SIZE:page_number * PAGE_SIZE]
    for row in window:
        row["asked"], row["answered"] = asked(row["prompt"]), answered(row["response"])
        row["negative"] = is_negative(row)
    return {"rows": window, "counts": counts, "page": page_number, "pages": pages, "matching": len(shown)}


@router.get("/ui/serving")
async def serving_page(request: Request, page_number: int = Query(1, alias="page"), negative: bool = False,
                       session: Session = Depends(needs(MONITOR))):
    registry = request.app.state.ui.registry
    tests = await anyio.to_thread.run_sync(ab_overview, registry)
    queue = await anyio.to_thread.run_sync(feedback_queue, registry, page_number, negative)
    return page(request, "serving.html", session, title="A/B & feedback", tests=tests, queue=queue,
                negative=negative, running=sum(t["active"] for t in tests))
