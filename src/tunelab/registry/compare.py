"""``tunelab runs compare``: what changed between runs and what it did.

Three parts: the config keys whose values differ (only those), the metric deltas against the first
run, and the flip table: on the held-out items the runs share, which went right -> wrong and which
wrong -> right. Flips are what a single accuracy number hides: two runs at 85% can disagree on 20% of
the items.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from tunelab.registry.ingest import tuned_key
from tunelab.registry.queries import find_run, headline_metrics, is_right, items_of, latest_evaluation, run_folder_rows
from tunelab.registry.schema import Run

MAX_FLIPS_SHOWN = 20


def flatten(config: dict | None, prefix: str = "") -> dict:
    """{"train": {"seed": 1}} -> {"train.seed": 1}; lists stay values."""
    out = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(configs: list[dict]) -> dict[str, list]:
    """Keys whose values are not the same in every config, with each config's value (None when absent)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat))
    return {key: [f.get(key) for f in flat] for key in keys if len({repr(f.get(key)) for f in flat}) > 1}


def metric_deltas(runs: list[Run]) -> dict[str, dict]:
    """Each headline metric of every run, and each run's delta from the first run."""
    metrics = [headline_metrics(run.metrics) for run in runs]
    names = sorted(set().union(*metrics))
    out = {}
    for name in names:
        values = [m.get(name) for m in metrics]
        first = values[0]
        deltas = [None if v is None or first is None else v - first for v in values]
        out[name] = {"values": values, "deltas": deltas}
    return out


def flips(session: Session, first: Run, other: Run) -> dict:
    """Right -> wrong and wrong -> right items between two runs' tuned answers, on the items both answered."""
    a = latest_evaluation(session, tuned_key(first.id), arm="tuned")
    b = latest_evaluation(session, tuned_key(other.id), arm="tuned")
    if a is None or b is None:
        missing = first.name if a is None else other.name
        return {"shared": 0, "note": f"{missing} has no per-item results (it did not finish, or was not evaluated)"}
    items_a, items_b = items_of(session, a), items_of(session, b)
    shared = [h for h in items_a if h in items_b]
    rows = run_folder_rows(first) | run_folder_rows(other)
    lost, gained = [], []
    both_right = both_wrong = 0
    for item in shared:
        right_a, right_b = is_right(items_a[item]), is_right(items_b[item])
        if right_a and right_b:
            both_right += 1
        elif not right_a and not right_b:
            both_wrong += 1
        else:
            row = rows.get(item, {})
            flip = {"item": item, "input": row.get("input"), "reference": row.get("reference"),
                    "before": items_a[item].prediction, "after": items_b[item].prediction}
            (lost if right_a else gained).append(flip)
    return {"from": first.name, "to": other.name, "shared": len(shared), "both_right": both_right,
            "both_wrong": both_wrong, "right_to_wrong": lost, "wrong_to_right": gained}


def compare_runs(session: Session, refs: list[str]) -> dict:
    runs = [find_run(session, ref) for ref in refs]
    return {
        "runs": [{"id": run.id, "name": run.name, "path": run.path} for run in runs],
        "config_diff": config_diff([run.config or {} for run in runs]),
        "metrics": metric_deltas(runs),
        "flips": [flips(session, runs[0], other) for other in runs[1:]],
    }
