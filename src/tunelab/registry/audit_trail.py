"""The audit trail: what tunelab's commands and server write to the audit log, and the checkpoints signed into
the registry (the log itself, its chain and its checks are in ``security/audit.py``).

``record(action, **objects)`` appends one entry, and signs a checkpoint (length, head hash, time; HMAC-SHA256
under ``audit_key()``) into ``audit_checkpoints`` when the log reaches a multiple of ``CHECKPOINT_EVERY``
entries or the caller asks (every promotion and rollback does). A checkpoint is signed only for a log that
passes ``verify``, so a log altered since its last checkpoint is never made to look good.

When: an action is recorded after its own write has committed (the registry transaction, the atomic file
write), so an entry always describes something that happened; a process killed between the two leaves the
action without its entry. Training, which takes long, is recorded twice: ``train.start`` before it and
``train.finish`` with the run's status after it, so a start without a finish is a run whose process died.
Recording never undoes or stops an action: when the log cannot be written, one warning is printed.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from tunelab.errors import TunelabError
from tunelab.registry.db import Registry, open_registry
from tunelab.registry.keys import secret
from tunelab.registry.schema import AuditCheckpoint, DatasetVersion, Run
from tunelab.security.audit import CHECKPOINT_EVERY, AuditLog, Checkpoint, Verdict, checkpoint_mac, utc_now, verify
from tunelab.tables import text_table

KEY_VARIABLE = "TUNELAB_AUDIT_KEY"
KEY_FILE = "audit_key"


def audit_key() -> bytes:
    """The 32-byte key that signs checkpoints: ``$TUNELAB_AUDIT_KEY`` (64 hex digits), else the file
    ``$TUNELAB_HOME/audit_key`` (made on first use, owner-only). The one place the key is looked up."""
    text = secret(KEY_VARIABLE, KEY_FILE).decode()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise TunelabError(f"the audit key must be 64 hex digits (32 bytes); check ${KEY_VARIABLE} or "
                           f"$TUNELAB_HOME/{KEY_FILE}")
    return key


def log_name(log: AuditLog) -> str:
    """Which log a checkpoint is for (host and file), so machines sharing one registry keep theirs apart."""
    return f"{socket.gethostname()}:{log.path.resolve()}"


def local_actor() -> str:
    """``local:<user>`` for the command line."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in a bare container
        return f"local:uid{os.getuid()}"


def warn(message: str) -> None:
    print(f"warning: audit log: {message}", file=sys.stderr, flush=True)


def record(action: str, actor: str | None = None, *, registry: Registry | str | None = None,
           checkpoint: bool = False, **objects) -> dict | None:
    """Append ``action`` by ``actor`` (default the local user) on ``objects`` (ids and hashes; None values are
    left out), then sign a checkpoint when one is due or ``checkpoint`` is set. ``registry``: an open registry
    or a URL (opened only to sign). Returns the entry, or None after a warning when it could not be written."""
    log = AuditLog()
    try:
        entry = log.append(action, actor or local_actor(), objects)
    except Exception as exc:  # the action itself happened: say so loudly, never undo it
        warn(f"{action} was not recorded: {_reason(exc)}")
        return None
    written = [e for e in (log.repaired, entry) if e is not None]
    if checkpoint or any((e["seq"] + 1) % CHECKPOINT_EVERY == 0 for e in written):
        try:
            with _opened(registry) as opened:
                sign(opened, log, entry["seq"] + 1, entry["hash"])
        except Exception as exc:
            warn(f"no checkpoint signed after entry {entry['seq']}: {_reason(exc)}")
    return entry


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {text}"


@contextmanager
def _opened(registry: Registry | str | None) -> Iterator[Registry]:
    if isinstance(registry, Registry):
        yield registry
        return
    opened = open_registry(registry)
    try:
        yield opened
    finally:
        opened.close()


def checkpoints_of(registry: Registry, log: AuditLog) -> list[Checkpoint]:
    with registry.session() as session:
        rows = session.scalars(select(AuditCheckpoint).where(AuditCheckpoint.log == log_name(log))
                               .order_by(AuditCheckpoint.id)).all()
        return [Checkpoint(r.id, r.length, r.head, r.signed, r.mac) for r in rows]


def verify_log(registry: Registry, log: AuditLog | None = None, key: bytes | None = None) -> Verdict:
    log = log or AuditLog()
    known = checkpoints_of(registry, log)  # read before the log: a checkpoint signed meanwhile is within it
    return verify(log.scan(), key or audit_key(), log_name(log), known)


def sign(registry: Registry, log: AuditLog | None = None, length: int | None = None,
         head: str | None = None) -> Checkpoint:
    """Sign (``length``, ``head``), by default the log's current end, after checking the whole log."""
    log = log or AuditLog()
    key = audit_key()
    verdict = verify_log(registry, log, key)
    if not verdict.ok:
        raise TunelabError(f"not signing a checkpoint of a log that fails verification: {verdict.problem}")
    if length is None:
        length, head = verdict.entries, verdict.head
    if length == 0:
        raise TunelabError("the audit log is empty: there is nothing to sign")
    if length > verdict.entries:
        raise TunelabError(f"the audit log has {verdict.entries} entries, fewer than the {length} to sign")
    name, signed = log_name(log), utc_now()
    with registry.session() as session:
        row = AuditCheckpoint(log=name, length=length, head=head, signed=signed,
                              mac=checkpoint_mac(key, name, length, head, signed))
        session.add(row)
        session.flush()
        return Checkpoint(row.id, length, head, signed, row.mac)


def run_objects(registry: Registry | None, run_dir: str | Path) -> dict:
    """A run's ids for an entry: its registry id, name, status and dataset version (id and content hash)."""
    # start-up time: ingest loads the run and eval modules (peft); `tunelab audit` needs none of them
    from tunelab.registry.ingest import run_path

    objects = {"run_name": Path(run_dir).name}
    if registry is None:
        return objects
    with registry.session() as session:
        run = session.scalar(select(Run).where(Run.path == run_path(run_dir)))
        if run is None:
            return objects
        objects |= {"run": run.id, "run_name": run.name, "status": run.status}
        version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
        if version is not None:
            objects |= {"dataset_version": version.id, "data_hash": version.content_hash}
    return objects


def artifacts_digest(run_dir: str | Path) -> str | None:
    """sha256 of a run's artifacts.json, which lists the checksum of every file it wrote, weights included."""
    # start-up time: the run folder module loads peft; `tunelab audit` needs none of it
    from tunelab.runs.folder import RunFolder

    path = RunFolder(run_dir).artifacts_path
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# ---- tunelab audit

def audit_verify(url: str | None, repair: bool, as_json: bool) -> bool:
    """Check the audit log against its chain and signed checkpoints; True when it shows no tampering.
    ``repair`` cuts off an incomplete last entry (an append that did not finish) of a log that passes."""
    registry = open_registry(url)
    verdict = verify_log(registry)
    cut = 0
    if repair and verdict.ok and verdict.unfinished:
        cut = AuditLog().repair(local_actor())
        verdict = verify_log(registry)
    data = {"ok": verdict.ok, "entries": verdict.entries, "checkpoints": verdict.checkpoints, "head": verdict.head,
            "problem": verdict.problem, "first_bad_entry": verdict.first_bad,
            "incomplete_last_entry_bytes": verdict.unfinished, "repaired_bytes": cut}
    text = verdict.summary()
    if cut:
        text = f"repaired: cut {cut} bytes of an incomplete last entry (recorded as audit.repair)\n{text}"
    _emit(data, text, as_json)
    return verdict.ok


def audit_checkpoint(url: str | None, as_json: bool) -> None:
    checkpoint = sign(open_registry(url))
    data = {"checkpoint": checkpoint.number, "length": checkpoint.length, "head": checkpoint.head,
            "signed": checkpoint.signed}
    _emit(data, f"checkpoint {checkpoint.number}: {checkpoint.length} entries, head {checkpoint.head[:16]}, "
                f"signed {checkpoint.signed}", as_json)


def audit_show(limit: int, as_json: bool) -> None:
    entries = AuditLog().entries()[-limit:] if limit > 0 else []
    rows = [[e.get("seq"), str(e.get("time"))[:19], e.get("actor"), e.get("action"),
             " ".join(f"{k}={_short(v)}" for k, v in (e.get("objects") or {}).items())] for e in entries]
    _emit(entries, text_table(["seq", "time (UTC)", "actor", "action", "objects"], rows) if entries
          else "the audit log is empty", as_json)


def _short(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def _emit(data, text: str, as_json: bool) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False) if as_json else text)
