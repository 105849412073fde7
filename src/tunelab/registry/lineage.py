"""``tunelab lineage``: the graph from dataset versions and rows to runs, models and aliases, both ways.

Start anywhere: a model (``NAME``, ``NAME@VERSION``, ``NAME@ALIAS``), a run (folder, id or name), a
dataset (``NAME`` or ``NAME@VERSION`` or a content-hash prefix), or one row (``row:HASH``, or
``FILE:LINE`` for the row at that line of a data file). Runs are linked to rows through their data
manifest, so a row leads to every run that trained on it even when the runs read it from different files.
A ``model:``, ``run:``, ``dataset:`` or ``row:`` prefix settles a name that could be several things.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.data.formats import read_records
from tunelab.data.split import row_hash
from tunelab.errors import TunelabError
from tunelab.registry.ingest import effective_status
from tunelab.registry.models import aliases_of, resolve
from tunelab.registry.queries import find_run
from tunelab.registry.schema import Dataset, DatasetRow, DatasetVersion, Model, ModelVersion, Run
from tunelab.runs.folder import RunFolder

KINDS = ("model", "run", "dataset", "row")


def lineage(session: Session, ref: str) -> dict:
    kind, _, rest = ref.partition(":")
    if kind in KINDS and rest and not Path(ref).exists():
        return _lineage_of(session, kind, rest)
    return _lineage_of(session, _guess_kind(session, ref), ref)


def _guess_kind(session: Session, ref: str) -> str:
    name = ref.partition("@")[0]
    if session.scalar(select(Model.id).where(Model.name == name)) is not None:
        return "model"
    if RunFolder.is_run(ref):
        return "run"
    if datasets_named(session, ref):
        return "dataset"
    file, _, line = ref.rpartition(":")
    if line.isdigit() and Path(file).is_file():
        return "row"
    return "run"  # a run id or run name; find_run says so clearly when it is neither


def _lineage_of(session: Session, kind: str, ref: str) -> dict:
    if kind == "model":
        model, version = resolve(session, ref)
        versions = [version]
        runs = [session.get(Run, version.run_id)]
        return _graph(session, f"model {model.name} v{version.version}", runs, versions)
    if kind == "run":
        run = find_run(session, ref)
        return _graph(session, f"run {run.name} ({run.id})", [run])
    if kind == "dataset":
        versions = datasets_named(session, ref)
        if not versions:
            raise TunelabError(f"no dataset {ref!r} in the registry (see tunelab datasets list)")
        return _graph(session, f"dataset {ref}", _runs_that_saw(session, [v.id for v in versions]),
                      datasets=versions)
    if kind == "row":
        row = _row_hash(ref)
        # ids first: PostgreSQL cannot compare the JSON columns that DISTINCT over whole rows would need
        holding = select(DatasetRow.version_id).where(DatasetRow.row_hash == row)
        training = holding.where(DatasetRow.split == "train")
        holders = session.scalars(select(DatasetVersion).where(DatasetVersion.id.in_(holding))
                                  .order_by(DatasetVersion.id)).all()
        trained = session.scalars(select(Run).where(Run.dataset_version_id.in_(training)).order_by(Run.created)).all()
        graph = _graph(session, f"row {row}", list(trained), datasets=list(holders))
        graph["row"] = {"hash": row, "in": [{"dataset": _dataset_label(session, v),
                                             "splits": _splits_of(session, v, row)} for v in holders]}
        return graph
    raise TunelabError(f"lineage of {kind!r}: use one of {', '.join(KINDS)}")


def datasets_named(session: Session, ref: str) -> list[DatasetVersion]:
    """``NAME`` (all versions), ``NAME@N``, or a content-hash prefix of at least 8 characters."""
    name, _, number = ref.partition("@")
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is not None:
        query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
        if number.isdigit():
            query = query.where(DatasetVersion.version == int(number))
        return list(session.scalars(query.order_by(DatasetVersion.version)).all())
    if len(ref) >= 8:
        return list(session.scalars(select(DatasetVersion).where(DatasetVersion.content_hash.startswith(ref))).all())
    return []


def _row_hash(ref: str) -> str:
    """A row hash as given, or the hash of the row at FILE:LINE (1-based line of the file)."""
    file, _, line = ref.rpartition(":")
    if not (line.isdigit() and file and Path(file).is_file()):
        return ref
    records, _ = read_records(file, on_error="quarantine")
    for record in records:
        if record.line == int(line):
            return row_hash(record)
    raise TunelabError(f"{file} has no readable row at line {line}")


def _runs_that_saw(session: Session, version_ids: list[int]) -> list[Run]:
    """Runs that read these dataset versions, and runs that trained on any of their rows."""
    rows = select(DatasetRow.row_hash).where(DatasetRow.version_id.in_(version_ids))
    sharing = select(DatasetRow.version_id).where(DatasetRow.split == "train", DatasetRow.row_hash.in_(rows))
    return list(session.scalars(select(Run).where((Run.dataset_version_id.in_(version_ids))
                                                  | Run.dataset_version_id.in_(sharing))
                                .order_by(Run.created)).all())


def _graph(session: Session, subject: str, runs: list[Run], versions: list[ModelVersion] | None = None,
           datasets: list[DatasetVersion] | None = None) -> dict:
    """Datasets -> runs -> model versions -> aliases, for ``runs``; ``versions`` limits the models shown."""
    dataset_ids = {v.id for v in datasets or []} | {r.dataset_version_id for r in runs if r.dataset_version_id}
    run_ids = [r.id for r in runs]
    if versions is None:
        versions = list(session.scalars(select(ModelVersion).where(ModelVersion.run_id.in_(run_ids))
                                        .order_by(ModelVersion.id)).all())
    models = []
    for version in versions:
        model = session.get(Model, version.model_id)
        aliases = [a for a, number in aliases_of(session, model).items() if number == version.version]
        run = session.get(Run, version.run_id)
        models.append({"name": model.name, "version": version.version, "run_id": run.id, "run": run.name,
                       "aliases": aliases, "artifact": version.artifact_path})
    return {
        "subject": subject,
        "datasets": [_dataset_node(session, session.get(DatasetVersion, i)) for i in sorted(dataset_ids)],
        "runs": [{"id": r.id, "name": r.name, "status": effective_status(r)[0], "path": r.path,
                  "dataset": _dataset_label(session, session.get(DatasetVersion, r.dataset_version_id))
                  if r.dataset_version_id else None} for r in runs],
        "models": models,
    }


def _dataset_label(session: Session, version: DatasetVersion) -> str:
    return f"{session.get(Dataset, version.dataset_id).name}@{version.version}"


def _dataset_node(session: Session, version: DatasetVersion) -> dict:
    return {"dataset": _dataset_label(session, version), "hash": version.content_hash, "rows": version.rows,
            "origin": version.origin, "path": version.path}


def _splits_of(session: Session, version: DatasetVersion, row: str) -> list[str]:
    return sorted(set(session.scalars(select(DatasetRow.split).where(DatasetRow.version_id == version.id,
                                                                     DatasetRow.row_hash == row)).all()))


def format_lineage(graph: dict) -> str:
    """The graph as indented text: each dataset, the runs that read it, the models built from them."""
    lines = [f"lineage of {graph['subject']}"]
    if "row" in graph:
        places = "; ".join(f"{p['dataset']} ({', '.join(p['splits'])})" for p in graph["row"]["in"]) or "no dataset"
        lines.append(f"  row {graph['row']['hash']} is in: {places}")
    for node in graph["datasets"]:
        lines.append(f"  dataset {node['dataset']}  {node['hash'][:12]}  rows {node['rows']}  ({node['origin']})")
    models_by_run: dict[str, list[dict]] = {}
    for model in graph["models"]:
        models_by_run.setdefault(model["run_id"], []).append(model)
    for run in graph["runs"]:
        lines.append(f"  -> run {run['name']} ({run['id']}, {run['status']})  data {run['dataset'] or '-'}")
        for model in models_by_run.get(run["id"], []):
            aliases = f"  [{', '.join('@' + a for a in model['aliases'])}]" if model["aliases"] else ""
            lines.append(f"     -> model {model['name']} v{model['version']}{aliases}")
    if not graph["runs"]:
        lines.append("  (no runs)")
    return "\n".join(lines)
