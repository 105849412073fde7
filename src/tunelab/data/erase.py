"""Rows removed from a data file for an erasure request, leaving every other byte of the file as it was.

A selector is ``--subject ID`` (the salted user hash the server stores; rows carry it as ``user_hash`` at the
top level or in ``meta``) or ``--match FIELD=VALUE`` (a top-level field or a ``meta`` field equal to VALUE).
The file is rewritten atomically (encrypted again when a key is set); the old file is crypto-shredded when it
was encrypted: its key slots are overwritten through a handle opened before the replacement, so the ciphertext
left in freed disk blocks has no data key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.split import content_hash
from tunelab.errors import TunelabError
from tunelab.security.crypto import EMPTY_SLOT, IDENTITY, is_encrypted_file
from tunelab.security.files import iter_lines, read_json, sealed_writer, write_json

SUBJECT_FIELD = "user_hash"


@dataclass(frozen=True)
class Selector:
    field: str
    value: str
    kind: str  # "subject" or "match"

    @classmethod
    def parse(cls, subject: str | None, match: str | None) -> Selector:
        if (subject is None) == (match is None):
            raise TunelabError("give exactly one of --subject ID or --match FIELD=VALUE")
        if subject is not None:
            if not subject.strip():
                raise TunelabError("--subject needs the user hash the server stored (tunelab data erase --subject ID)")
            return cls(SUBJECT_FIELD, subject.strip(), "subject")
        name, sep, value = match.partition("=")
        if not sep or not name.strip() or not value:
            raise TunelabError(f"--match {match!r}: use FIELD=VALUE, e.g. --match customer_id=C-1042")
        return cls(name.strip(), value, "match")

    @property
    def digest(self) -> str:
        """What the receipt keeps of the request: a hash, never the value itself."""
        return hashlib.sha256(f"{self.kind}:{self.field}={self.value}".encode()).hexdigest()

    def matches(self, row) -> bool:
        if not isinstance(row, dict):
            return False
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        return any(_equal(where.get(self.field), self.value) for where in (row, meta))


def _equal(found, value: str) -> bool:
    return found is not None and (found == value or str(found) == value)


@dataclass
class ErasedFile:
    path: str
    removed: int = 0
    kept: int = 0
    row_hashes: list[str] = field(default_factory=list)  # the removed rows' hashes (as the registry keeps them)
    shredded: bool = False


def erase_rows(path: str | Path, selector: Selector, items: set[str] | None = None,
               dry_run: bool = False) -> ErasedFile:
    """Remove the rows of the JSON-lines file ``path`` that ``selector`` matches, or whose ``item`` (the row
    hash that predictions.jsonl names its rows by) is in ``items``. Rows that are not JSON objects stay."""
    path = Path(path)
    result = ErasedFile(str(path))
    kept_lines = []
    for line in iter_lines(path):
        row = _parse(line)
        if row is not None and (selector.matches(row) or _rejected_raw_matches(row, selector)
                                or (items and row.get("item") in items)):
            result.removed += 1
            result.row_hashes.append(_hash_of(row))
        else:
            kept_lines.append(line)
    result.kept = len(kept_lines)
    if result.removed and not dry_run:
        result.shredded = _replace(path, kept_lines)
    return result


def _parse(line: str):
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _rejected_raw_matches(row: dict, selector: Selector) -> bool:
    """A quarantined row keeps its raw text: match the row that text holds."""
    raw = row.get("raw")
    return isinstance(raw, str) and "reason" in row and selector.matches(_parse(raw))


def _hash_of(row: dict) -> str:
    """The row's hash as the registry's manifests hold it (``split.row_hash`` of the canonical row that prepared
    files and eval_set.jsonl hold), or the ``item`` a predictions row names."""
    if isinstance(row.get("item"), str):
        return row["item"]
    return content_hash([{k: v for k, v in row.items() if k != "meta"}])[:16]


def _replace(path: Path, lines: list[str]) -> bool:
    old = open(path, "r+b") if is_encrypted_file(path) else None  # noqa: SIM115 - closed below
    try:
        with sealed_writer(path, text=True) as f:
            for line in lines:
                f.write(line + "\n")
        if old is None:
            return False
        old.seek(IDENTITY.size)
        old.write(EMPTY_SLOT * 2)
        old.flush()
        os.fsync(old.fileno())
        return True
    finally:
        if old is not None:
            old.close()



def refresh_prepared_folder(folder: str | Path, erasure: str) -> None:
    """After rows left a prepared folder: its summary's counts follow the split files, its example snippets
    (which may quote erased rows, and cannot be matched against the request) are dropped, and report.md is
    written again from the remaining rows."""
    # the report module imports matplotlib: only an erasure that changed a prepared folder needs it
    from tunelab.data.report import write_data_report

    folder = Path(folder)
    summary = read_json(folder / "summary.json")
    if summary is None:
        return
    counts = {split: sum(1 for line in iter_lines(folder / f"{split}.jsonl") if line.strip())
              for split in ("train", "val", "test") if (folder / f"{split}.jsonl").is_file()}
    summary["splits"] = counts
    summary["rows_kept"] = sum(counts.values())
    summary["duplicate_clusters"] = []
    summary.pop("labels", None)
    summary["erased"] = [*summary.get("erased", []), erasure]
    write_json(folder / "summary.json", summary)
    if (folder / "report.md").exists():
        write_data_report(folder, summary)
