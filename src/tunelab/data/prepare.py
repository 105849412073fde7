"""``tunelab data prepare``: raw files in, clean deterministic train/val/test files out.

Every input row ends up in exactly one place: a split file or quarantine.jsonl with its reason, so
rows_read == rows_kept + quarantined. A rerun with the same inputs and settings writes
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tunelab.data.formats import MAX_RAW_CHARS, common_kind, read_records
from tunelab.data.records import Record, Rejected
from tunelab.data.split import content_hash, split_records
from tunelab.errors import DataError, TunelabError
from tunelab.io import atomic_write_json, atomic_write_jsonl

SPLIT_NAMES = ("train", "val", "test")

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls except \t and \n
_INNER_BLANKS = re.compile(r"(?<=[^ \t\n])[ \t]{2,}")  # runs after text; indentation stays

# Short categories for the summary, matched against reason texts in order.
_REASON_CATEGORIES = (
    ("invalid JSON", re.compile(r"invalid JSON|is not valid JSON")),
    ("exact duplicate", re.compile(r"^exact duplicate")),
    ("unknown column", re.compile(r"^unknown column")),
    ("missing field", re.compile(r"^missing |is missing ")),
    ("empty after normalization", re.compile(r"empty after normalization")),
    ("empty field", re.compile(r" is empty")),
    ("invalid role", re.compile(r"\.(role|from) is ")),
    ("turn order", re.compile(r" turn")),
    ("unsupported key", re.compile(r"unsupported key")),
    ("wrong type", re.compile(r" must be |not a JSON object")),
    ("wrong field count", re.compile(r"fields but the header")),
    ("unpaired surrogate", re.compile(r"unpaired surrogate")),
)


def prepare_data(
    inputs: list[str],
    out_dir,
    shape: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    on_error: str = "quarantine",
    normalize: bool = True,
    extra_columns: str = "error",
    encoding: str | None = None,
) -> dict:
    """Read, normalize, de-duplicate and split ``inputs``; write the splits, quarantine.jsonl and
    summary.json into ``out_dir`` and return the summary."""
    if not inputs:
        raise TunelabError("no input files given")
    records: list[Record] = []
    quarantine: list[Rejected] = []
    rows_read = 0
    for path in inputs:
        kept, rejected = read_records(path, shape, on_error, extra_columns, encoding)
        rows_read += len(kept) + len(rejected)
        records += kept
        quarantine += rejected
    if normalize:
        records = _normalize_all(records, quarantine, on_error)
    kind = common_kind(records)
    records = _drop_duplicates(records, quarantine)
    splits = dict(zip(SPLIT_NAMES, split_records(records, val_fraction, test_fraction, seed), strict=True))
    order = {str(path): i for i, path in enumerate(inputs)}
    quarantine.sort(key=lambda r: (order.get(r.source, len(order)), r.line))

    out = Path(out_dir)
    for name, split in splits.items():
        atomic_write_jsonl(out / f"{name}.jsonl", (r.to_json() for r in split))
    quarantine_path = out / "quarantine.jsonl"
    atomic_write_jsonl(quarantine_path, (r.to_json() for r in quarantine))
    reasons = Counter(reason_category(r.reason) for r in quarantine)
    summary = {
        "inputs": [str(path) for path in inputs],
        "kind": kind,
        "settings": {"shape": shape, "val_fraction": val_fraction, "test_fraction": test_fraction,
                     "seed": seed, "normalize": normalize},
        "rows_read": rows_read,
        "rows_kept": len(records),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
        "quarantine_file": str(quarantine_path),
        "splits": {name: len(split) for name, split in splits.items()},
    }
    if kind == "labeled":
        summary["labels"] = {name: dict(sorted(Counter(r.label for r in split).items()))
                             for name, split in splits.items()}
    summary["content_hash"] = {name: content_hash(r.to_json() for r in split)
                               for name, split in splits.items()}
    atomic_write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    """The short report ``tunelab data prepare`` prints."""
    splits = summary["splits"]
    lines = [
        f"Prepared {summary['rows_kept']} {summary['kind']} rows from {len(summary['inputs'])} "
        f"input file(s): " + ", ".join(f"{name} {n}" for name, n in splits.items())
    ]
    for name, counts in summary.get("labels", {}).items():
        lines.append(f"  {name} labels: " + ", ".join(f"{label} {n}" for label, n in counts.items()))
    if summary["quarantined"]:
        lines.append(f"Quarantined {summary['quarantined']} of {summary['rows_read']} rows "
                     f"(see {summary['quarantine_file']}):")
        width = max(len(reason) for reason in summary["quarantine_reasons"])
        lines += [f"  {reason:<{width}}  {n}" for reason, n in summary["quarantine_reasons"].items()]
    else:
        lines.append("No rows quarantined.")
    return "\n".join(lines)


def reason_category(reason: str) -> str:
    """A short category for a rejection reason, to count problems by kind in the summary."""
    for category, pattern in _REASON_CATEGORIES:
        if pattern.search(reason):
            return category
    return reason.split(":", 1)[0][:60]


def normalize_text(text: str) -> str:
    """NFKC, no control characters but newline and tab, inner runs of spaces/tabs collapsed to
    one space, ends stripped. Leading indentation stays, so code in answers keeps its meaning."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _INNER_BLANKS.sub(" ", _CONTROL.sub("", text)).strip()


def _normalize_all(records: list[Record], quarantine: list[Rejected], on_error: str) -> list[Record]:
    normalized = []
    for record in records:
        result = _normalized(record)
        if isinstance(result, Record):
            normalized.append(result)
        elif on_error == "raise":
            raise DataError(record.source, result, record.line)
        else:
            quarantine.append(_rejected(record, result))
    return normalized


def _normalized(record: Record) -> Record | str:
    """The record with normalized text, or the reason it cannot be kept (a field became empty)."""
    if record.kind == "chat":
        messages = [{"role": t["role"], "content": normalize_text(t["content"])} for t in record.messages]
        for i, turn in enumerate(messages):
            if not turn["content"]:
                return f'"messages"[{i}].content is empty after normalization'
        return replace(record, messages=messages)
    text = normalize_text(record.text)
    if not text:
        return '"text" is empty after normalization'
    if record.kind == "text":
        return replace(record, text=text)
    label = normalize_text(record.label)
    if not label:
        return '"label" is empty after normalization'
    return replace(record, text=text, label=label)


def _drop_duplicates(records: list[Record], quarantine: list[Rejected]) -> list[Record]:
    """Keep the first of records with identical content; meta (such as ids) does not count."""
    first_seen: dict[str, Record] = {}
    unique = []
    for record in records:
        row = record.to_json()
        row.pop("meta", None)
        key = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        original = first_seen.setdefault(key, record)
        if original is record:
            unique.append(record)
        else:
            quarantine.append(_rejected(record, f"exact duplicate of {original.source} line {original.line}"))
    return unique


def _rejected(record: Record, reason: str) -> Rejected:
    raw = json.dumps(record.to_json(), ensure_ascii=False)[:MAX_RAW_CHARS]
    return Rejected(record.source, record.line, reason, raw)
