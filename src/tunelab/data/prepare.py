"""``tunelab data prepare``: raw files in, clean deterministic train/val/test files out.

Stages: read -> normalize -> PII check -> exact de-duplication -> near-duplicate removal -> split
-> removal of val/test rows that leak training rows.

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

from tunelab.data.dedup import DEFAULT_THRESHOLD, NearDuplicateIndex, cross_split_leaks
from tunelab.data.formats import MAX_RAW_CHARS, common_kind, read_records
from tunelab.data.pii import PII_TYPES, redact_record
from tunelab.data.records import Record, Rejected
from tunelab.data.report import write_data_report
from tunelab.data.split import content_hash, split_records
from tunelab.errors import DataError, TunelabError
from tunelab.io import atomic_write_json, atomic_write_jsonl

SPLIT_NAMES = ("train", "val", "test")
PII_MODES = ("report", "redact", "drop", "off")
MAX_CLUSTER_EXAMPLES = 5  # near-duplicate clusters shown in summary.json
MAX_REMOVED_EXAMPLES = 5  # removed rows shown per cluster
SNIPPET_CHARS = 120

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls except \t and \n
_INNER_BLANKS = re.compile(r"(?<=[^ \t\n])[ \t]{2,}")  # runs after text; indentation stays

# Short categories for the summary, matched against reason texts in order.
_REASON_CATEGORIES = (
    ("invalid JSON", re.compile(r"invalid JSON|is not valid JSON")),
    ("exact duplicate", re.compile(r"^exact duplicate")),
    ("near duplicate", re.compile(r"^near duplicate")),
    ("leak into val/test", re.compile(r"^leak: ")),
    ("contains PII", re.compile(r"^contains PII")),
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
    pii: str = "report",
    near_dup_threshold: float | None = DEFAULT_THRESHOLD,
) -> dict:
    """Read, normalize, check for PII, de-duplicate and split ``inputs``; write the splits,
    quarantine.jsonl, summary.json and report.md into ``out_dir`` and return the summary.

    ``pii``: ``report`` counts finds and changes nothing, ``redact`` replaces them with typed
    placeholders, ``drop`` quarantines rows that have any, ``off`` skips the check.
    ``near_dup_threshold``: the estimated Jaccard similarity of word 5-grams at which a row is a
    near duplicate of an earlier one (quarantined), and a val/test row leaks a train row
    (quarantined); None turns both checks off.
    """
    if not inputs:
        raise TunelabError("no input files given")
    if pii not in PII_MODES:
        raise TunelabError(f'pii must be one of {", ".join(PII_MODES)}, got "{pii}"')
    if near_dup_threshold is not None and not 0 < near_dup_threshold <= 1:
        raise TunelabError(f"near_dup_threshold must be above 0 and at most 1 (or None to turn the "
                           f"check off), got {near_dup_threshold}")
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
    pii_counts: Counter = Counter()
    if pii != "off":
        records, pii_counts = _check_pii(records, quarantine, pii)
    records = _drop_duplicates(records, quarantine)
    clusters: list[dict] = []
    near_duplicates = leaks_removed = 0
    if near_dup_threshold is not None:
        records, clusters, near_duplicates = _drop_near_duplicates(records, quarantine, near_dup_threshold)
    splits = dict(zip(SPLIT_NAMES, split_records(records, val_fraction, test_fraction, seed), strict=True))
    if near_dup_threshold is not None:
        leaks_removed = _remove_leaks(splits, quarantine, near_dup_threshold)
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
                     "seed": seed, "normalize": normalize, "near_dup_threshold": near_dup_threshold},
        "rows_read": rows_read,
        "rows_kept": sum(len(split) for split in splits.values()),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
        "quarantine_file": str(quarantine_path),
        "splits": {name: len(split) for name, split in splits.items()},
        "pii_mode": pii,
        "pii": {pii_type: pii_counts[pii_type] for pii_type in PII_TYPES if pii_counts[pii_type]},
        "near_duplicates": near_duplicates,
        "leaks_removed": leaks_removed,
        "duplicate_clusters": clusters,
    }
    if kind == "labeled":
        summary["labels"] = {name: dict(sorted(Counter(r.label for r in split).items()))
                             for name, split in splits.items()}
    summary["content_hash"] = {name: content_hash(r.to_json() for r in split)
                               for name, split in splits.items()}
    atomic_write_json(out / "summary.json", summary)
    write_data_report(out, summary)
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
    lines.append(_format_pii(summary.get("pii_mode", "off"), summary.get("pii", {})))
    if summary.get("settings", {}).get("near_dup_threshold") is None:
        lines.append("Near-duplicate and leak checks off.")
    else:
        lines.append(f"Near duplicates removed: {summary['near_duplicates']}; val/test rows removed "
                     f"as near duplicates of train rows (leaks): {summary['leaks_removed']}")
    lines.append(f"Data report: {Path(summary['quarantine_file']).with_name('report.md')}")
    return "\n".join(lines)


def _format_pii(mode: str, counts: dict) -> str:
    if mode == "off":
        return "PII check off."
    if not counts:
        return "No PII found."
    found = ", ".join(f"{pii_type} {n}" for pii_type, n in counts.items())
    return {
        "report": f"PII found and left in place (--pii redact or drop removes it): {found}",
        "redact": f"PII redacted: {found}",
        "drop": f"PII found; those rows quarantined: {found}",
    }[mode]


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


def _check_pii(records: list[Record], quarantine: list[Rejected], mode: str) -> tuple[list[Record], Counter]:
    """Records after the PII ``mode`` (report, redact or drop), and the finds per type. Dropped rows
    go to quarantine redacted, so the PII is not copied into the output folder."""
    kept, totals = [], Counter()
    for record in records:
        result, found = redact_record(record, mode)
        totals.update(found)
        if result is not None:
            kept.append(result)
            continue
        redacted, _ = redact_record(record, "redact")
        types = ", ".join(pii_type for pii_type in PII_TYPES if found[pii_type])
        quarantine.append(_rejected(redacted, f"contains PII: {types}"))
    return kept, totals


def _drop_near_duplicates(
    records: list[Record], quarantine: list[Rejected], threshold: float
) -> tuple[list[Record], list[dict], int]:
    """Keep the first of each group of near duplicates, in input order. Returns the kept records,
    example clusters (largest first) and how many were removed."""
    index = NearDuplicateIndex(threshold)
    kept: list[Record] = []
    removed_by: dict[int, list[tuple[Record, float]]] = {}  # kept position -> removed rows
    for position, record in enumerate(records):
        text = _content_text(record)
        original = index.add(position, text)
        if original is None:
            kept.append(record)
            continue
        similarity = index.similarity(original, text)
        first = records[original]
        quarantine.append(_rejected(
            record, f"near duplicate of {first.source} line {first.line} (similarity ~{similarity:.2f})"
        ))
        removed_by.setdefault(original, []).append((record, similarity))
    largest = sorted(removed_by.items(), key=lambda item: (-len(item[1]), item[0]))[:MAX_CLUSTER_EXAMPLES]
    clusters = [
        {"kept": _snippet(records[position]),
         "removed": [{**_snippet(record), "similarity": round(similarity, 2)}
                     for record, similarity in removed[:MAX_REMOVED_EXAMPLES]],
         "removed_total": len(removed)}
        for position, removed in largest
    ]
    return kept, clusters, len(records) - len(kept)


def _remove_leaks(splits: dict[str, list[Record]], quarantine: list[Rejected], threshold: float) -> int:
    """Move val/test rows whose input near-duplicates a train row's input to quarantine.

    Inputs (user turns, or the text) are compared rather than whole rows: a held-out question the
    model was trained on leaks even when the answers differ.
    """
    train = splits["train"]
    held_out = [(name, i) for name in ("val", "test") for i in range(len(splits[name]))]
    if not train or not held_out:
        return 0
    leaks = cross_split_leaks([_input_text(r) for r in train],
                              [_input_text(splits[name][i]) for name, i in held_out], threshold)
    leaked = set()
    for other, train_index in leaks:
        name, i = held_out[other]
        source = train[train_index]
        quarantine.append(_rejected(
            splits[name][i], f"leak: near duplicate of train row {source.source} line {source.line}"
        ))
        leaked.add((name, i))
    for name in ("val", "test"):
        splits[name] = [r for i, r in enumerate(splits[name]) if (name, i) not in leaked]
    return len(leaked)


def _content_text(record: Record) -> str:
    """What near-duplicate removal compares: user and assistant turns (a long system prompt shared
    by every row would make all rows look alike), or the text (labels aside)."""
    if record.kind == "chat":
        return "\n".join(t["content"] for t in record.messages if t["role"] != "system")
    return record.text


def _input_text(record: Record) -> str:
    """What the leak check compares: the user turns, or the text."""
    if record.kind == "chat":
        return "\n".join(t["content"] for t in record.messages if t["role"] == "user")
    return record.text


def _snippet(record: Record) -> dict:
    return {"source": record.source, "line": record.line, "text": _content_text(record)[:SNIPPET_CHARS]}


def _rejected(record: Record, reason: str) -> Rejected:
    raw = json.dumps(record.to_json(), ensure_ascii=False)[:MAX_RAW_CHARS]
    return Rejected(record.source, record.line, reason, raw)
