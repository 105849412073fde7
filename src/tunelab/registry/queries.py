"""Reading runs and evaluations back: find a run by id, name or folder, list runs, a run's details."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunelab.errors import TunelabError
from tunelab.registry.ingest import effective_status, headline, ingest_run_in, item_of, run_path
from tunelab.registry.schema import Artifact, Dataset, DatasetVersion, EvalItem, Evaluation, MetricPoint, Run
from tunelab.runs.folder import RunFolder

MIN_ID_PREFIX = 4


def find_run(session: Session, ref: str) -> Run:
    """The run named by ``ref``: a run folder (recorded now if it is not yet), a run id or id prefix, or a
    run name (the newest run of that name)."""
    if RunFolder.is_run(ref):
        run = session.scalar(select(Run).where(Run.path == run_path(ref)))
        return run or session.get(Run, ingest_run_in(session, RunFolder(ref)))
    if len(ref) >= MIN_ID_PREFIX:
        matches = session.scalars(select(Run).where(Run.id.startswith(ref))).all()
        if len(matches) == 1:
            return matches[0]
    by_name = session.scalars(select(Run).where(Run.name == ref).order_by(Run.created.desc())).all()
    if by_name:
        return by_name[0]
    raise TunelabError(f"no run {ref!r} in the registry: give a run folder, a run id (see tunelab runs list) "
                       f"or a run name")


def last_step(session: Session, run: Run) -> int | None:
    if run.last_step is not None:
        return run.last_step
    return session.scalar(select(func.max(MetricPoint.step)).where(MetricPoint.run_id == run.id))


def run_summary(session: Session, run: Run) -> dict:
    """One line's worth of a run: id, name, status (a dead process reads as failed), task, method, data,
    the headline tuned metric."""
    status, reason = effective_status(run)
    summary = {"id": run.id, "name": run.name, "status": status, "task": run.task, "method": run.method,
               "base_model": run.base_model, "path": run.path, "created": run.created.isoformat(),
               "sweep": run.sweep, "metrics": headline_metrics(run.metrics)}
    if status != "finished":
        summary |= {"reason": reason, "last_step": last_step(session, run)}
    if run.dataset_version_id:
        version = session.get(DatasetVersion, run.dataset_version_id)
        dataset = session.get(Dataset, version.dataset_id)
        summary["dataset"] = f"{dataset.name} v{version.version}"
    return summary


def headline_metrics(metrics: dict | None) -> dict:
    """base.* and tuned.* scalar metrics, flattened: {"tuned.accuracy": 0.9, ...}."""
    return {f"{arm}.{name}": value for arm in ("base", "tuned")
            for name, value in headline((metrics or {}).get(arm) or {}).items()}


def list_runs(session: Session, status: str | None = None, limit: int | None = None) -> list[dict]:
    runs = session.scalars(select(Run).order_by(Run.created.desc())).all()
    summaries = [run_summary(session, run) for run in runs]
    if status:
        summaries = [s for s in summaries if s["status"] == status]
    return summaries[:limit] if limit else summaries


def series(session: Session, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as (step, value) pairs, by name."""
    out: dict[str, list[tuple[int, float]]] = {}
    points = session.execute(select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
                             .where(MetricPoint.run_id == run_id).order_by(MetricPoint.step)).all()
    for name, step, value in points:
        out.setdefault(name, []).append((step, value))
    return out


def run_details(session: Session, run: Run) -> dict:
    """Everything the registry holds about a run."""
    details = run_summary(session, run)
    artifacts = session.scalars(select(Artifact).where(Artifact.run_id == run.id).order_by(Artifact.path)).all()
    evaluations = session.scalars(select(Evaluation).where(Evaluation.run_id == run.id)
                                  .order_by(Evaluation.created)).all()
    logged = series(session, run.id)
    details |= {
        "config": run.config, "seed": run.seed, "packages": run.packages, "git_commit": run.git_commit,
        "hardware": run.hardware, "started": run.started, "ended": run.ended, "pid": run.pid, "host": run.host,
        "metrics_full": run.metrics,
        "series": {name: {"points": len(points), "last": points[-1][1], "last_step": points[-1][0]}
                   for name, points in logged.items()},
        "artifacts": [{"path": a.path, "bytes": a.bytes, "sha256": a.sha256} for a in artifacts],
        "evaluations": [{"id": e.id, "arm": e.arm, "model": e.model_key, "eval_set": e.eval_set_hash[:12],
                         "items": _item_count(session, e.id), "metrics": e.metrics} for e in evaluations],
    }
    return details


def _item_count(session: Session, evaluation_id: int) -> int:
    return session.scalar(select(func.count()).select_from(EvalItem).where(EvalItem.evaluation_id == evaluation_id))


def latest_evaluation(session: Session, model_key: str, arm: str | None = None, eval_set_hash: str | None = None,
                      code_version: str | None = None) -> Evaluation | None:
    query = select(Evaluation).where(Evaluation.model_key == model_key)
    if arm:
        query = query.where(Evaluation.arm == arm)
    if eval_set_hash:
        query = query.where(Evaluation.eval_set_hash == eval_set_hash)
    if code_version:
        query = query.where(Evaluation.code_version == code_version)
    return session.scalars(query.order_by(Evaluation.created.desc(), Evaluation.id.desc())).first()


def items_of(session: Session, evaluation: Evaluation) -> dict[str, EvalItem]:
    """An evaluation's per-item results by item hash."""
    items = session.scalars(select(EvalItem).where(EvalItem.evaluation_id == evaluation.id)
                            .order_by(EvalItem.position)).all()
    return {item.item_hash: item for item in items}


def is_right(item: EvalItem) -> bool:
    """Whether an item was answered right: its label or exact answer matched, or for free text graded by
    token F1, at least half the reference's words were matched (F1 >= 0.5)."""
    if item.correct is not None:
        return bool(item.correct)
    return (item.score or 0.0) >= 0.5


def run_folder_rows(run: Run) -> dict[str, dict]:
    """The run folder's prediction rows by item (inputs and references to show), if the folder is there."""
    folder = RunFolder(run.path)
    if not Path(run.path).is_dir():
        return {}
    return {item_of(row): row for row in folder.predictions()}
