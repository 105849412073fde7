"""``tunelab data erase``: one person's (or one key's) rows removed everywhere tunelab keeps them, and every
run, model version and alias that learned from them marked tainted.

1. Every recorded dataset version's files (a prepared folder's splits and quarantine; the JSON-lines files a
   run read) lose the matching rows (``data/erase.py``: atomic rewrite, old encrypted file crypto-shredded). A
   prepared folder is recorded again as a new version; the old version is marked ``erased``.
2. Lineage: runs whose dataset version holds an erased row (by row hash), or whose evaluation scored one, are
   tainted, with the model versions registered from them and the aliases on those. Their run folders lose the
   rows from eval_set.jsonl and predictions.jsonl; the registry drops the per-item predictions on those rows.
3. The server's stored answers and feedback of that user (``user_hash``) are deleted (SQLite with
   ``secure_delete``, then a WAL checkpoint, so the bytes are overwritten, not just unlinked).
4. A receipt (hashes and counts only, never the erased content or the value asked for) goes to
   ``$TUNELAB_HOME/erasures/ID.json`` and the registry, and the erasure is audited.

``tunelab serve`` refuses a tainted model unless ``--allow-tainted``; rebuilding tainted models is the
retraining loop's job.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import delete, select, update

from tunelab.data.erase import ErasedFile, Selector, erase_rows, refresh_prepared_folder
from tunelab.io import atomic_write_json
from tunelab.paths import tunelab_home
from tunelab.registry.audit_trail import record
from tunelab.registry.db import Registry
from tunelab.registry.ingest import record_prepared
from tunelab.registry.ingest import run_path as run_path_of
from tunelab.registry.schema import (Alias, Dataset, DatasetRow, DatasetVersion, Erasure, EvalItem, Evaluation,
                                     Feedback, Model, ModelVersion, Run, ServedResponse)
from tunelab.runs.folder import RunFolder
from tunelab.security.files import read_bytes

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl")


def erase(registry: Registry, selector: Selector, dry_run: bool = False) -> dict:
    erasure = secrets.token_hex(8)
    with registry.session() as session:
        versions = [(v.id, v.path, v.origin, v.settings, session.get(Dataset, v.dataset_id).name)
                    for v in session.scalars(select(DatasetVersion).where(DatasetVersion.erased.is_(None)))]
    files: list[ErasedFile] = []
    touched: dict[int, str] = {}  # version id -> dataset name, for versions whose files lost rows
    hashes: set[str] = set()
    not_rewritten: list[str] = []
    for version_id, path, origin, settings, name in versions:
        rewritable, others = _files_of(path, origin, settings)
        not_rewritten += [other for other in others if selector.value.encode() in read_bytes(other)]
        for file in rewritable:
            erased = erase_rows(file, selector, dry_run=dry_run)
            if erased.removed:
                files.append(erased)
                hashes.update(erased.row_hashes)
                touched[version_id] = name
    with registry.session() as session:
        held = set(session.scalars(select(DatasetRow.version_id).where(DatasetRow.row_hash.in_(hashes))))
        scored = _runs_that_scored(session, hashes)
        runs = session.scalars(select(Run).where((Run.dataset_version_id.in_(held | set(touched)))
                                                 | Run.id.in_(scored))).all()
        run_paths = {r.id: r.path for r in runs}
        model_versions = session.scalars(select(ModelVersion).where(ModelVersion.run_id.in_(list(run_paths)))).all()
        labels = {mv.id: f"{session.get(Model, mv.model_id).name}@{mv.version}" for mv in model_versions}
        aliases = session.execute(select(Alias.alias, Alias.version_id).where(Alias.version_id.in_(list(labels)))).all()
        alias_names = sorted(f"{labels[v].split('@')[0]}@{a}" for a, v in aliases)
    for run_id, run_path in run_paths.items():
        folder = RunFolder(run_path)
        for file in (folder.eval_set_path, folder.predictions_path):
            if file.is_file():
                erased = erase_rows(file, selector, items=hashes, dry_run=dry_run)
                if erased.removed:
                    files.append(erased)
                    hashes.update(erased.row_hashes)
    receipt = {"erasure": erasure, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "request": {"kind": selector.kind, "field": selector.field, "sha256": selector.digest},
               "dry_run": dry_run, "rows_removed": sum(f.removed for f in files if f.path.endswith(SPLIT_FILES)),
               "files": [{"path": f.path, "removed": f.removed, "kept": f.kept, "crypto_shredded": f.shredded}
                         for f in files],
               "not_rewritten": sorted(set(not_rewritten)),  # delete the matching rows there yourself
               "row_hashes": sorted(hashes),
               "tainted": {"runs": sorted(run_paths), "model_versions": sorted(labels.values()),
                           "aliases": alias_names}}
    if dry_run:
        receipt |= _served_rows(registry, selector, delete_them=False)
        return receipt
    receipt["dataset_versions"] = _new_versions(registry, versions, touched, erasure)
    receipt |= _served_rows(registry, selector, delete_them=True)
    with registry.session() as session:
        session.execute(update(Run).where(Run.id.in_(list(run_paths))).values(tainted=erasure))
        session.execute(update(ModelVersion).where(ModelVersion.id.in_(list(labels))).values(tainted=erasure))
        evaluations = select(Evaluation.id).where(Evaluation.run_id.in_(list(run_paths)))
        if hashes:
            session.execute(update(EvalItem).where(EvalItem.evaluation_id.in_(evaluations),
                                                   EvalItem.item_hash.in_(hashes)).values(prediction=None))
        session.add(Erasure(id=erasure, selector=selector.digest, receipt=receipt))
    _overwrite_freed_pages(registry)
    path = tunelab_home() / "erasures" / f"{erasure}.json"
    atomic_write_json(path, receipt)
    receipt["receipt"] = str(path)
    record("data.erase", registry=registry, checkpoint=True, erasure=erasure, request=selector.digest,
           rows=receipt["rows_removed"], runs=len(run_paths), model_versions=len(labels))
    return receipt


def _files_of(path: str | None, origin: str, settings: dict | None) -> tuple[list[Path], list[str]]:
    """The JSON-lines files that hold a dataset version's rows, and its files in other formats (CSV, Parquet,
    JSON...), which an erasure cannot rewrite row by row: those that hold the value asked for are named in the
    receipt instead."""
    if not path:
        return [], []
    folder = Path(path)
    if origin == "prepare" and folder.is_dir():
        return [folder / name for name in SPLIT_FILES if (folder / name).is_file()], []
    named = [Path(p) for p in dict.fromkeys([path] + [(settings or {}).get(s) for s in ("val", "test")])
             if p and Path(p).is_file()]
    return [p for p in named if p.suffix == ".jsonl"], [str(p) for p in named if p.suffix != ".jsonl"]


def _runs_that_scored(session, hashes: set[str]) -> set[str]:
    if not hashes:
        return set()
    evaluations = select(EvalItem.evaluation_id).where(EvalItem.item_hash.in_(hashes))
    return {r for r in session.scalars(select(Evaluation.run_id).where(Evaluation.id.in_(evaluations))) if r}


def _new_versions(registry: Registry, versions, touched: dict[int, str], erasure: str) -> list[dict]:
    """Record each rewritten prepared folder as a new version and mark the old one erased."""
    changed = []
    for version_id, path, origin, _, name in versions:
        if version_id not in touched:
            continue
        if origin == "prepare":
            refresh_prepared_folder(path, erasure)
        new = record_prepared(registry, path, name=name) if origin == "prepare" else None
        with registry.session() as session:
            session.get(DatasetVersion, version_id).erased = erasure
        changed.append({"dataset": name, "old_version_id": version_id, "new_version_id": new.id if new else None})
    return changed


def _served_rows(registry: Registry, selector: Selector, delete_them: bool) -> dict:
    """The server's stored answers and feedback of the user (``--subject``, or ``--match user_hash=...``)."""
    if selector.field != "user_hash":
        return {"served_responses_deleted": 0, "feedback_deleted": 0}
    with registry.session() as session:
        responses = select(ServedResponse.id).where(ServedResponse.user_hash == selector.value)
        feedback = select(Feedback.id).where((Feedback.user_hash == selector.value)
                                             | Feedback.response_id.in_(responses))
        counts = {"served_responses_deleted": len(session.scalars(responses).all()),
                  "feedback_deleted": len(session.scalars(feedback).all())}
        if delete_them:
            session.execute(delete(Feedback).where(Feedback.id.in_(feedback)))
            session.execute(delete(ServedResponse).where(ServedResponse.user_hash == selector.value))
    return counts


def _overwrite_freed_pages(registry: Registry) -> None:
    """SQLite keeps deleted rows' bytes in free pages and in the write-ahead log until they are reused; with
    ``secure_delete`` on (db.py) deleted content is zeroed, and a checkpoint folds the log back in."""
    if registry.engine.dialect.name == "sqlite":
        connection = registry.engine.raw_connection()  # outside a transaction: a checkpoint cannot run in one
        try:
            connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()


def tainted_reason(registry: Registry, run_path: str | Path) -> str | None:
    """The erasure that tainted the run in ``run_path``, or None."""
    with registry.session() as session:
        return session.scalar(select(Run.tainted).where(Run.path == run_path_of(run_path)))



def format_receipt(receipt: dict) -> str:
    tainted = receipt["tainted"]
    head = "would remove" if receipt["dry_run"] else "removed"
    lines = [f"{head} {receipt['rows_removed']} dataset row(s) in {len(receipt['files'])} file(s); "
             f"{receipt['served_responses_deleted']} served answer(s) and {receipt['feedback_deleted']} feedback "
             "row(s)"]
    for f in receipt["files"]:
        lines.append(f"  {f['path']}: -{f['removed']} row(s), {f['kept']} kept"
                     + (", old file crypto-shredded" if f["crypto_shredded"] else ""))
    for v in receipt.get("dataset_versions", []):
        new = f"new version id {v['new_version_id']}" if v["new_version_id"] else "files rewritten in place"
        lines.append(f"  dataset {v['dataset']}: version id {v['old_version_id']} marked erased; {new}")
    lines.append(f"tainted: {len(tainted['runs'])} run(s), model versions {', '.join(tainted['model_versions']) or '-'}"
                 f", aliases {', '.join(tainted['aliases']) or '-'} (tunelab serve refuses them without "
                 "--allow-tainted)")
    for path in receipt["not_rewritten"]:
        lines.append(f"  not rewritten (not JSON lines; remove the rows there yourself): {path}")
    if not receipt["dry_run"]:
        lines.append(f"receipt {receipt['erasure']}: {receipt['receipt']} (hashes and counts only)")
    return "\n".join(lines)
