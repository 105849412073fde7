"""Recording a run while it trains, next to it rather than inside it.

``recording(run_dir)`` wraps a training call: a background thread copies the run folder's status and
new metric points into the registry every few seconds, and the full record (data, metrics, artifacts,
per-item results) is written when the call returns or fails. A process killed outright stops
recording; its run then reads as failed, with its last recorded step. The registry never stops a run:
if it cannot be written, one warning is printed and training goes on.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from tunelab.errors import TunelabError
from tunelab.registry.audit_trail import record, run_objects
from tunelab.registry.db import Registry, open_registry
from tunelab.registry.ingest import ingest_eval_output, ingest_run, record_prepared
from tunelab.registry.schema import Evaluation
from tunelab.runs.folder import RunFolder

SYNC_SECONDS = 2.0


def warn(message: str) -> None:
    print(f"warning: registry: {message}; the run itself is not affected", file=sys.stderr, flush=True)


def try_open(url: str | None = None) -> Registry | None:
    """The registry, or None after one warning when it cannot be opened (the command goes on without it)."""
    opened = safely(lambda: open_registry(url))
    return opened if isinstance(opened, Registry) else None


def safely(action: Callable[[], object]) -> object | None:
    """Run a registry write; on any error print one warning instead of stopping the caller."""
    try:
        return action()
    except TunelabError as exc:
        warn(str(exc))
    except Exception as exc:  # a registry problem must never end a training run
        warn(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return None


@contextmanager
def recording(run_dir: str | Path, sweep: str | None = None, url: str | None = None,
              every: float = SYNC_SECONDS) -> Iterator[None]:
    record("train.start", registry=url, run_name=Path(run_dir).name, sweep=sweep)
    registry = try_open(url)
    if registry is None:
        try:
            yield
        finally:
            record_finish(None, run_dir, sweep, url)
        return
    folder = RunFolder(run_dir)
    started_before = folder.status_path.stat().st_mtime if folder.status_path.exists() else None
    stop = threading.Event()

    def ours() -> bool:
        """Only the folder this call writes: not an older run's folder that the call refused to replace."""
        return folder.status_path.exists() and folder.status_path.stat().st_mtime != started_before

    def follow() -> None:
        while not stop.wait(every):
            if ours():
                safely(lambda: ingest_run(registry, run_dir, sweep, final=False))

    thread = threading.Thread(target=follow, name="tunelab-registry", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if ours():
            run_id = safely(lambda: ingest_run(registry, run_dir, sweep, final=True))
            if run_id:
                print(f"registry: recorded run {folder.path.name} as {run_id}", flush=True)
            record_finish(registry, run_dir, sweep, url)
        else:  # refused before it wrote anything (the folder exists, a config error)
            record("train.finish", registry=registry, run_name=folder.path.name, sweep=sweep, status="not started")
        registry.close()


def record_finish(registry: Registry | None, run_dir: str | Path, sweep: str | None, url: str | None) -> None:
    """The audit entry of a training call's end, after its status and registry record are written."""
    objects = (safely(lambda: run_objects(registry, run_dir)) if registry is not None else None) or {}
    objects.setdefault("run_name", Path(run_dir).name)
    objects.setdefault("status", safely(lambda: RunFolder(run_dir).status().status))
    record("train.finish", registry=registry or url, sweep=sweep, **objects)


def record_prepared_folder(folder: str | Path, url: str | None = None) -> None:
    """Record a ``tunelab data prepare`` output as a dataset version (a warning if that fails)."""
    registry = try_open(url)
    version = safely(lambda: record_prepared(registry, folder)) if registry is not None else None
    if version is not None:
        print(f"registry: recorded dataset {Path(folder).resolve().name} v{version.version} "
              f"({version.content_hash[:12]})", flush=True)
    record("data.prepare", registry=registry or url, dataset=Path(folder).resolve().name,
           dataset_version=version.id if version else None, version=version.version if version else None,
           data_hash=version.content_hash if version else None)
    if registry is not None:
        registry.close()


def record_eval(out_dir: str | Path, model: str, data: str, url: str | None = None) -> None:
    """Record a ``tunelab eval`` output with its per-item results (a warning if that fails)."""
    registry = try_open(url)
    ids = safely(lambda: ingest_eval_output(registry, out_dir, model, data)) if registry is not None else None
    if ids:
        print(f"registry: recorded the evaluation of {model} on {data}", flush=True)
    stored = safely(lambda: evaluations_of(registry, ids)) if ids else None
    record("eval", registry=registry or url, model=Path(model).name if Path(model).exists() else model,
           evaluations=ids or None, **(stored or {}))
    if registry is not None:
        registry.close()


def evaluations_of(registry: Registry, ids: list[int]) -> dict:
    """The model keys (run:<id> or base:<model>) and eval set hashes of stored evaluations, for the audit log."""
    with registry.session() as session:
        rows = session.execute(select(Evaluation.model_key, Evaluation.eval_set_hash)
                               .where(Evaluation.id.in_(ids))).all()
    return {"model_keys": sorted({key for key, _ in rows}), "eval_set": sorted({h for _, h in rows})}
