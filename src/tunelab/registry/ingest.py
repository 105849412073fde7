"""Recording into the registry: prepared datasets, runs (while they train and when they end) and evaluations.

Everything is read from the folders tunelab writes (a prepared data folder, a run folder, an eval output
folder), so ingesting twice is harmless and a folder can be recorded after the fact. Weights are never
copied: artifacts are indexed by path, size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from pathlib import Path

import yaml
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import tunelab
from tunelab.data.formats import read_records
from tunelab.data.split import row_hash
from tunelab.errors import TunelabError
from tunelab.eval.metrics import item_scores
from tunelab.io import read_json, read_jsonl
from tunelab.registry.db import Registry, get_or_create
from tunelab.registry.environment import git_commit, hardware, package_versions
from tunelab.registry.schema import (Artifact, Dataset, DatasetRow, DatasetVersion, EvalItem, Evaluation, MetricPoint,
                                     Run)
from tunelab.runs.folder import RunFolder, process_alive
from tunelab.security import files as sealed

SPLITS = ("train", "val", "test")
ARMS = ("base", "tuned")
ROWS_PER_INSERT = 5_000


# ---- datasets

def manifest_hash(manifest: dict[str, list[str]]) -> str:
    """The content hash of a dataset version: sha256 over its splits' row hashes, in order."""
    canonical = json.dumps({split: manifest.get(split, []) for split in SPLITS}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def prepared_manifest(folder: Path) -> dict[str, list[str]]:
    """Row hashes of a prepared folder's split files, in file order."""
    return {split: [row_hash(r) for r in read_records(folder / f"{split}.jsonl")[0]]
            for split in SPLITS if (folder / f"{split}.jsonl").is_file()}


def record_prepared(registry: Registry, folder: str | Path, name: str | None = None) -> DatasetVersion:
    """Record a ``tunelab data prepare`` output folder as a version of dataset ``name`` (default: the folder's
    name): its row counts, settings, data report and per-row manifest."""
    folder = Path(folder)
    summary = sealed.read_json(folder / "summary.json")
    if summary is None:
        raise TunelabError(f"{folder} has no summary.json; pass a folder written by tunelab data prepare")
    manifest = prepared_manifest(folder)
    with registry.session() as session:
        return _dataset_version(session, name or folder.resolve().name, manifest, kind=summary.get("kind"),
                                path=str(folder.resolve()), origin="prepare", settings=summary.get("settings"),
                                report=_report_of(summary))


def _report_of(summary: dict) -> dict:
    keep = ("rows_read", "rows_kept", "quarantined", "quarantine_reasons", "splits", "pii_mode", "pii",
            "near_duplicates", "leaks_removed", "labels", "content_hash", "inputs")
    return {key: summary[key] for key in keep if key in summary}


def _dataset_version(session: Session, name: str, manifest: dict[str, list[str]], kind: str | None, path: str | None,
                     origin: str, settings: dict | None, report: dict | None) -> DatasetVersion:
    """The version with this content (found by hash: the same rows under any name are one version), or a
    new version of dataset ``name`` with its manifest. Two processes recording the same content at once
    both end with the one version: the loser of the insert finds the winner's."""
    content = manifest_hash(manifest)
    for _ in range(3):
        found = session.scalar(select(DatasetVersion).where(DatasetVersion.content_hash == content))
        if found is not None:
            return found
        try:
            with session.begin_nested():
                return _new_dataset_version(session, name, content, manifest, kind=kind, path=path, origin=origin,
                                            settings=settings, report=report)
        except IntegrityError:
            continue  # another process inserted the dataset or this version first; look again
    raise TunelabError(f"could not record dataset {name}: other processes kept changing it")


def _new_dataset_version(session: Session, name: str, content: str, manifest: dict[str, list[str]],
                         **fields) -> DatasetVersion:
    dataset = get_or_create(session, Dataset, name=name)
    latest = session.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset.id))
    version = DatasetVersion(dataset_id=dataset.id, version=(latest or 0) + 1, content_hash=content,
                             rows={split: len(manifest.get(split, [])) for split in SPLITS}, **fields)
    session.add(version)
    session.flush()
    rows = [{"version_id": version.id, "split": split, "position": i, "row_hash": h}
            for split in SPLITS for i, h in enumerate(manifest.get(split, []))]
    for start in range(0, len(rows), ROWS_PER_INSERT):
        session.execute(insert(DatasetRow), rows[start:start + ROWS_PER_INSERT])
    return version


def _run_dataset_name(config: dict) -> str:
    """A run's data as a dataset name: a prepared folder's name, else the training file's stem."""
    data = config.get("data") or {}
    if data.get("mix"):
        return "mix:" + "+".join(source["name"] for source in data["mix"])
    train = Path(data.get("train") or "data")
    return train.parent.name if train.stem == "train" and train.parent.name else train.stem


# ---- runs

def ingest_run(registry: Registry, run_dir: str | Path, sweep: str | None = None, final: bool = True) -> str:
    """Record (or update) the run in ``run_dir``; returns its id. While a run trains (``final=False``)
    only its status and metric series are written; at the end also its data, metrics, artifacts and
    per-item evaluations."""
    folder = RunFolder(run_dir)
    config = raw_config(folder)
    with registry.session() as session:
        return record_run_in(session, folder, config, sweep, final).id


def raw_config(folder: RunFolder) -> dict:
    """A run's config.yaml as written (not validated: a run from an older tunelab is still recorded)."""
    if not folder.config_path.is_file():
        raise TunelabError(f"{folder.path} is not a run folder (no config.yaml)")
    return yaml.safe_load(folder.config_path.read_text(encoding="utf-8"))


def record_run_in(session: Session, folder: RunFolder, config: dict, sweep: str | None = None,
                  final: bool = True) -> Run:
    """``ingest_run`` inside an open session."""
    run = _upsert_run(session, folder, config, sweep)
    _sync_series(session, run.id, folder)
    if final:
        _sync_data(session, run, folder, config)
        _sync_artifacts(session, run.id, folder)
        _sync_evaluations(session, run, folder, config)
    return run


def run_path(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _upsert_run(session: Session, folder: RunFolder, config: dict, sweep: str | None) -> Run:
    path = run_path(folder.path)
    run = session.scalar(select(Run).where(Run.path == path))
    if run is None:
        run = Run(id=uuid.uuid4().hex[:12], path=path, packages=package_versions(),
                  git_commit=git_commit(), hardware=hardware(), sweep=sweep)
        session.add(run)
    status = read_json(folder.status_path) or {}
    run.name = config.get("run_name") or folder.path.name
    run.status = status.get("status") or ("finished" if folder.metrics_path.exists() else "running")
    for key in ("pid", "host", "started", "ended", "reason", "last_step"):
        setattr(run, key, status.get(key))
    run.task, run.method, run.base_model = config.get("task"), config.get("method"), config.get("model")
    run.seed = (config.get("train") or {}).get("seed")
    run.config = config
    run.metrics = folder.metrics()
    session.flush()
    return run


def _sync_series(session: Session, run_id: str, folder: RunFolder) -> None:
    """Add the logged steps not recorded yet; a log that restarted (a run folder replaced) is re-read."""
    by_step: dict[int, dict] = {}
    for row in read_jsonl(folder.train_log_path):
        if isinstance(row.get("step"), int):
            by_step.setdefault(row["step"], {}).update(
                {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))})
    recorded = session.scalar(select(func.max(MetricPoint.step)).where(MetricPoint.run_id == run_id))
    if recorded is not None and (not by_step or max(by_step) < recorded):
        session.execute(delete(MetricPoint).where(MetricPoint.run_id == run_id))
        recorded = None
    points = [{"run_id": run_id, "step": step, "name": name, "value": value}
              for step, values in sorted(by_step.items()) if recorded is None or step > recorded
              for name, value in values.items()]
    if points:
        session.execute(insert(MetricPoint), points)


def _sync_data(session: Session, run: Run, folder: RunFolder, config: dict) -> None:
    manifest = read_json(folder.data_manifest_path)
    if not manifest:
        return
    summary = folder.data_summary() or {}
    version = _dataset_version(session, _run_dataset_name(config), manifest, kind=summary.get("kind"),
                               path=(config.get("data") or {}).get("train"), origin="run",
                               settings=config.get("data"), report=summary)
    run.dataset_version_id = version.id


def _sync_artifacts(session: Session, run_id: str, folder: RunFolder) -> None:
    recorded = read_json(folder.artifacts_path)
    if recorded is None:
        return
    session.execute(delete(Artifact).where(Artifact.run_id == run_id))
    if recorded["artifacts"]:
        session.execute(insert(Artifact), [{"run_id": run_id, "path": a["path"], "bytes": a["bytes"],
                                            "sha256": a["sha256"]} for a in recorded["artifacts"]])


# ---- evaluations

def eval_code_version(config: dict) -> str:
    """What, besides the model and the items, decides an evaluation's results: tunelab's version and
    the settings that shape prompts and answers. Equal strings mean a stored result can be reused."""
    data, train, evaluation = config.get("data") or {}, config.get("train") or {}, config.get("eval") or {}
    settings = {"task": config.get("task"), "label_prompt": data.get("label_prompt"),
                "system_prompt": data.get("system_prompt"), "max_length": train.get("max_length"),
                "max_new_tokens": evaluation.get("max_new_tokens")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"tunelab {tunelab.__version__} eval {digest}"


def eval_set_hash(item_hashes: list[str]) -> str:
    """An eval set's identity: its items, whatever their order."""
    return hashlib.sha256("\n".join(sorted(set(item_hashes))).encode()).hexdigest()


def item_of(row: dict) -> str:
    """A prediction row's item: its row hash, or for rows written before items were named, a hash of
    its input and reference."""
    if row.get("item"):
        return row["item"]
    text = json.dumps([row.get("input"), row.get("reference")], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def per_item(rows: list[dict], arm: str) -> list[dict]:
    """Per-item results of one arm: item, prediction, correct, and score (correct as 0/1, else token F1)."""
    results = []
    for row in rows:
        prediction = row.get(f"{arm}_prediction")
        correct = row.get(f"{arm}_correct")
        if correct is None and prediction is not None:
            score = item_scores("f1", [str(row.get("reference", ""))], [str(prediction)])[0]
        else:
            score = None if correct is None else float(bool(correct))
        results.append({"item_hash": item_of(row), "prediction": None if prediction is None else str(prediction),
                        "correct": None if correct is None else bool(correct), "score": score})
    return results


def store_evaluation(session: Session, model_key: str, run_id: str | None, arm: str, items: list[dict],
                     metrics: dict, code_version: str, eval_set_path: str | None) -> Evaluation:
    """One evaluation with its per-item results, replacing an earlier one of the same model, items and code."""
    set_hash = eval_set_hash([item["item_hash"] for item in items])
    session.execute(delete(Evaluation).where(Evaluation.model_key == model_key, Evaluation.arm == arm,
                                             Evaluation.eval_set_hash == set_hash,
                                             Evaluation.code_version == code_version))
    evaluation = Evaluation(model_key=model_key, run_id=run_id, arm=arm, eval_set_hash=set_hash,
                            eval_set_path=eval_set_path, code_version=code_version, metrics=metrics)
    session.add(evaluation)
    session.flush()
    rows = [{"evaluation_id": evaluation.id, "position": i, **item} for i, item in enumerate(items)]
    for start in range(0, len(rows), ROWS_PER_INSERT):
        session.execute(insert(EvalItem), rows[start:start + ROWS_PER_INSERT])
    return evaluation


def tuned_key(run_id: str) -> str:
    return f"run:{run_id}"


def base_key(model: str) -> str:
    return f"base:{model}"


def _sync_evaluations(session: Session, run: Run, folder: RunFolder, config: dict) -> None:
    rows = folder.predictions()
    metrics = folder.metrics() or {}
    if not rows:
        return
    code = eval_code_version(config)
    eval_set = str(folder.eval_set_path) if folder.eval_set_path.is_file() else None
    for arm in ARMS:
        if f"{arm}_prediction" not in rows[0]:
            continue
        key = tuned_key(run.id) if arm == "tuned" else base_key(str(config.get("model")))
        store_evaluation(session, key, run.id, arm, per_item(rows, arm), headline(metrics.get(arm) or {}), code,
                         eval_set)


def headline(metrics: dict) -> dict:
    """An arm's scalar metrics (no confusion matrix or per-source tables)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def ingest_eval_output(registry: Registry, out_dir: str | Path, model: str, data: str) -> list[int]:
    """Record a ``tunelab eval`` output folder (metrics.json, predictions.jsonl) of a run or a plain model."""
    out_dir = Path(out_dir)
    rows = sealed.read_jsonl(out_dir / "predictions.jsonl")
    metrics = read_json(out_dir / "metrics.json") or {}
    if not rows:
        return []
    run = RunFolder(model) if RunFolder.is_run(model) else None
    config = raw_config(run) if run else {"model": model}
    ids = []
    with registry.session() as session:
        run_id = ingest_run_in(session, run) if run else None
        for arm in ARMS:
            if f"{arm}_prediction" not in rows[0]:
                continue
            if arm == "tuned":
                key = tuned_key(run_id) if run_id else base_key(model)
            else:
                key = base_key(str(config.get("model")))
            evaluation = store_evaluation(session, key, run_id, arm, per_item(rows, arm),
                                          headline(metrics.get(arm) or {}), eval_code_version(config), data)
            ids.append(evaluation.id)
    return ids


def ingest_run_in(session: Session, folder: RunFolder) -> str:
    """The id of the run in ``folder``, recording all of it first when it is new (a run trained before
    the registry existed, or elsewhere)."""
    found = session.scalar(select(Run.id).where(Run.path == run_path(folder.path)))
    return found or record_run_in(session, folder, raw_config(folder)).id


# ---- status as read back

def effective_status(run: Run) -> tuple[str, str | None]:
    """A run's status and reason; a run recorded as running whose process is gone (same host) is failed."""
    if run.status == "running" and run.host == socket.gethostname() and not process_alive(run.pid):
        return "failed", "the training process ended without recording an end"
    return run.status, run.reason
