"""The Runs page: every run in the registry in one sortable, filterable table, its status kept live.

The table is rendered on the server; htmx asks for it again every few seconds with the same filter
and sort, so a run's status and step change on screen while it trains. Ticking two or more runs
and pressing Compare opens the comparison.
"""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter, Depends, Request

from tunelab.registry.queries import list_runs
from tunelab.runs.report import HEADLINE_METRICS
from tunelab.security.roles import READ_RUNS
from tunelab.ui.render import page, partial
from tunelab.ui.sessions import Session, needs

router = APIRouter()

SORTS = {"created": "created", "name": "name", "status": "status", "method": "method", "task": "task",
         "metric": "metric_value", "dataset": "dataset"}


def headline(metrics: dict) -> tuple[str | None, float | None, float | None]:
    """(metric name, tuned value, tuned - base) of the run's headline metric."""
    for name in HEADLINE_METRICS + tuple(sorted(k.split(".", 1)[1] for k in metrics if k.startswith("tuned."))):
        tuned = metrics.get(f"tuned.{name}")
        if tuned is not None:
            base = metrics.get(f"base.{name}")
            return name, tuned, None if base is None else tuned - base
    return None, None, None


def table_rows(registry, query: str = "", status: str = "", sort: str = "created", order: str = "desc") -> list[dict]:
    """The runs as the table shows them, filtered by ``query`` (any of name, id, task, method, base model,
    dataset) and ``status``, sorted by ``sort``."""
    with registry.session() as db:
        rows = list_runs(db, status or None)
    for row in rows:
        row["metric"], row["metric_value"], row["metric_delta"] = headline(row.get("metrics") or {})
    words = query.lower().split()
    if words:
        rows = [r for r in rows if all(any(w in str(r.get(k) or "").lower() for k in
                                           ("name", "id", "task", "method", "base_model", "dataset", "sweep"))
                                       for w in words)]
    key = SORTS.get(sort, "created")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    present.sort(key=lambda r: r[key], reverse=order == "desc")
    return present + missing  # runs without the value last, whichever the order


@router.get("/ui/runs")
async def runs_page(request: Request, q: str = "", status: str = "", sort: str = "created", order: str = "desc",
                    session: Session = Depends(needs(READ_RUNS))):
    rows = await anyio.to_thread.run_sync(table_rows, request.app.state.ui.registry, q, status, sort, order)
    return page(request, "runs.html", session, title="Runs", rows=rows, q=q, status=status, sort=sort, order=order,
                now=time.time())


@router.get("/ui/runs/table")
async def runs_table(request: Request, q: str = "", status: str = "", sort: str = "created", order: str = "desc",
                     session: Session = Depends(needs(READ_RUNS))):
    rows = await anyio.to_thread.run_sync(table_rows, request.app.state.ui.registry, q, status, sort, order)
    return partial(request, "runs_table.html", session, rows=rows, q=q, status=status, sort=sort, order=order)
