"""The Compare page: two or more runs side by side, the first one the reference the others are measured against.

Four answers on one page: what was configured differently (every config key, the differing ones
highlighted and, by default, the only ones shown), what it did to the headline metrics (each run's
value, its delta from the reference, and the paired test on the held-out items both answered, in a
sentence), how training went (all runs' curves on one chart), and which items flipped (right -> wrong
and wrong -> right, with the input, the reference and both answers side by side). The last one is what
a single accuracy number hides, and what experiment trackers cannot show for text outputs.

Runs are named in the URL (``?runs=<id or name>&runs=...``) by the Runs page's "Compare selected"
button or this page's own picker. Only recorded runs are looked up: a folder path in a URL is never
read or recorded.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import anyio
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import or_, select

from tunelab.errors import TunelabError
from tunelab.registry.cards import LOWER_IS_BETTER
from tunelab.registry.compare import flatten, flips, metric_deltas
from tunelab.registry.ingest import effective_status
from tunelab.registry.paired import in_words, paired_test, tuned_items, verdict
from tunelab.registry.queries import find_run, headline_metrics, run_folder_rows
from tunelab.registry.schema import Run
from tunelab.registry.stats import PairedResult
from tunelab.runs.folder import RunFolder
from tunelab.runs.report import HEADLINE_METRICS
from tunelab.security.roles import READ_RUNS
from tunelab.ui.curves import log_rows
from tunelab.ui.render import page
from tunelab.ui.runs_list import headline, table_rows
from tunelab.ui.sessions import Session, needs

router = APIRouter()

MAX_FLIPS_SHOWN = 500  # per direction: the counts are always complete, the rows stop here
MAX_CURVE_ROWS = 2000  # training rows per run sent to the chart (validation rows are all kept)

# --- which runs --------------------------------------------------------------------------------------------


def recorded_run(db, ref: str) -> Run:
    """The recorded run with id or name ``ref`` (or a unique id prefix). Unlike the CLI's ``find_run``, a
    folder path is refused: a URL must not make the dashboard read or record folders."""
    exact = db.scalars(select(Run).where(or_(Run.id == ref, Run.name == ref)).order_by(Run.created.desc())).first()
    if exact is not None:
        return exact
    unknown = TunelabError(f"no run {ref!r} is recorded: name runs by id or name (the Runs page lists them)")
    if RunFolder.is_run(ref) or any(sep in ref for sep in "/\\"):
        raise unknown
    try:
        return find_run(db, ref)  # a unique id prefix
    except TunelabError:
        raise unknown from None


def chosen_runs(db, refs: list[str]) -> list[Run]:
    """The runs named by ``refs``, in order, each once."""
    runs: dict[str, Run] = {}
    for ref in (r.strip() for r in refs):
        if ref:
            run = recorded_run(db, ref)
            runs.setdefault(run.id, run)
    return list(runs.values())


# --- 1. config --------------------------------------------------------------------------------------------


@dataclass
class ConfigRow:
    key: str
    values: list[str]  # each run's value as text
    changed: bool

    @property
    def section(self) -> str:
        """'train.' of 'train.learning_rate' (shown muted), '' for a top-level key."""
        return self.key.rpartition(".")[0] + "." if "." in self.key else ""

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def shown(self) -> list[str]:
        """The values as the table prints them: differing paths without the folders they share."""
        return without_shared_folder(self.values) if self.changed else self.values


ABSENT = "(absent)"


def as_text(value) -> str:
    """A config value as YAML readers expect it: true/false, null, lists as JSON."""
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def without_shared_folder(values: list[str]) -> list[str]:
    """'/data/exp/runs/a-train.jsonl' and '/data/exp/runs/b-train.jsonl' -> '…/a-train.jsonl', '…/b-train.jsonl':
    the part that differs is what a reader compares (the full value stays in the cell's title)."""
    paths = [v for v in values if v != ABSENT]
    if len(paths) < 2 or not all(v.startswith("/") for v in paths):
        return values
    shared = posixpath.commonpath(paths)
    if len(shared) < 2 or any(v == shared for v in paths):
        return values
    return [v if v == ABSENT else "…" + v[len(shared):] for v in values]


def config_rows(configs: list[dict]) -> list[ConfigRow]:
    """Every flattened key of any config, with each config's value ('(absent)' where it has none)."""
    flat = [flatten(c) for c in configs]
    rows = []
    for key in sorted(set().union(*flat)):
        values = [as_text(f[key]) if key in f else ABSENT for f in flat]
        rows.append(ConfigRow(key, values, len({repr(f.get(key, KeyError)) for f in flat}) > 1))
    return rows


# --- 2. metrics and paired tests ----------------------------------------------------------------------------


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or any(word in metric for word in ("loss", "error"))


def metric_rows(runs: list[Run]) -> list[dict]:
    """Each tuned headline metric: every run's value and delta from the reference, headline metrics first."""
    deltas = metric_deltas(runs)
    names = [key.split(".", 1)[1] for key in deltas if key.startswith("tuned.")]
    order = {name: i for i, name in enumerate(HEADLINE_METRICS)}
    names.sort(key=lambda name: (order.get(name, len(order)), name))
    return [{"name": name, "values": deltas[f"tuned.{name}"]["values"], "deltas": deltas[f"tuned.{name}"]["deltas"],
             "lower_better": lower_is_better(name)} for name in names]


def references_of(runs: list[Run]) -> dict[str, str]:
    """Each held-out item's reference answer, from the run folders' prediction rows."""
    references = {}
    for run in runs:
        for item, row in run_folder_rows(run).items():
            if row.get("reference") is not None:
                references.setdefault(item, str(row["reference"]))
    return references


def paired_tests(db, runs: list[Run], metrics: list[str]) -> list[dict]:
    """For each run after the first and each metric with per-item values: the paired test against the first."""
    reference = runs[0]
    holder = tuned_items(db, reference)
    # the reference answers (read from the run folders) are needed only to score metrics other than accuracy
    answers = references_of(runs) if set(metrics) - {"accuracy"} else None
    tests = []
    for other in runs[1:]:
        challenger = tuned_items(db, other)
        for metric in metrics:
            result = paired_test(metric, holder, challenger, answers)
            if result is not None:
                tests.append({"run": other.name, "metric": metric, "result": result, "verdict": verdict(result),
                              "sentence": in_words(result, other.name, reference.name),
                              "how": how_tested(result, other.name, reference.name)})
    return tests


def how_tested(result: PairedResult, challenger: str, holder: str) -> str:
    """The test behind a sentence, with the counts it rests on."""
    if result.challenger_only is not None:
        return (f"Exact McNemar test on the items only one run got right: {challenger} alone on "
                f"{result.challenger_only}, {holder} alone on {result.holder_only}; "
                f"{result.confidence:.0%} Newcombe interval.")
    return (f"Paired bootstrap of the mean per-item {result.metric}: {challenger} {result.challenger:.3f}, "
            f"{holder} {result.holder:.3f}; {result.confidence:.0%} percentile interval.")


# --- 3. curves and 4. flips -----------------------------------------------------------------------------------


def thinned(rows: list[dict], limit: int = MAX_CURVE_ROWS) -> list[dict]:
    """At most about ``limit`` training rows (evenly spaced, the last kept) and every validation row."""
    train = [r for r in rows if "val_loss" not in r and "eval_loss" not in r]
    if len(train) <= limit:
        return rows
    stride = -(-len(train) // limit)
    keep = {id(r) for r in train[::stride]} | {id(train[-1])}
    return [r for r in rows if id(r) in keep or "val_loss" in r or "eval_loss" in r]


def flip_table(db, reference: Run, other: Run) -> dict:
    """``flips`` of the registry, with each direction's rows capped for the page (the counts stay whole)."""
    table = flips(db, reference, other)
    table.setdefault("from", reference.name)  # a pair without per-item results has only a note
    table.setdefault("to", other.name)
    for direction in ("right_to_wrong", "wrong_to_right"):
        rows = table.get(direction, [])
        table[f"{direction}_count"] = len(rows)
        table[direction] = rows[:MAX_FLIPS_SHOWN]
    return table


# --- the page -----------------------------------------------------------------------------------------------


def run_card(run: Run) -> dict:
    metric, value, _ = headline(headline_metrics(run.metrics))
    return {"id": run.id, "name": run.name, "status": effective_status(run)[0], "method": run.method, "task": run.task,
            "base_model": run.base_model, "created": run.created, "metric": metric, "metric_value": value}


def comparison(registry, refs: list[str]) -> dict:
    """Everything the page shows, read in one registry session (plain values only)."""
    with registry.session() as db:
        runs = chosen_runs(db, refs)
        if len(runs) < 2:
            return {"runs": [run_card(run) for run in runs]}
        metrics = metric_rows(runs)
        return {
            "runs": [run_card(run) for run in runs],
            "config": config_rows([run.config or {} for run in runs]),
            "metrics": metrics,
            "tests": paired_tests(db, runs, [m["name"] for m in metrics]),
            "flips": [flip_table(db, runs[0], other) for other in runs[1:]],
            "curves": [{"name": run.name, "rows": thinned(log_rows(run.path))} for run in runs],
        }


@router.get("/ui/compare")
async def compare_page(request: Request, runs: list[str] = Query(default=[]), pick: bool = False,
                       session: Session = Depends(needs(READ_RUNS))):
    """The comparison of the runs named (two or more), else the picker; an unknown run: the picker with one
    line saying which (404)."""
    registry = request.app.state.ui.registry
    try:
        chosen = await anyio.to_thread.run_sync(comparison, registry, runs)
    except TunelabError as exc:
        return await picker(request, session, runs, error=str(exc).splitlines()[0], status_code=404)
    if len(chosen["runs"]) >= 2 and not pick:
        names = " vs ".join(run["name"] for run in chosen["runs"])
        return page(request, "compare.html", session, title=f"Compare {names}", **chosen)
    notice = "pick at least two runs to compare" if len(chosen["runs"]) == 1 and not pick else None
    return await picker(request, session, [run["id"] for run in chosen["runs"]], notice=notice)


async def picker(request: Request, session: Session, ticked: list[str], error: str | None = None,
                 notice: str | None = None, status_code: int = 200):
    """The runs table with checkboxes, those named in ``ticked`` (ids or names) ticked."""
    rows = await anyio.to_thread.run_sync(table_rows, request.app.state.ui.registry)  # the Runs page's rows
    return page(request, "compare_pick.html", session, status_code=status_code, title="Compare runs", rows=rows,
                ticked=set(ticked), error=error, notice=notice)
