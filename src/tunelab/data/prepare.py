"""``tunelab data prepare``: raw files in, clean deterministic train/val/test files out.

Stages: read -> normalize -> quality filters -> PII check -> exact de-duplication -> near-duplicate
removal -> split -> removal of val/test rows that leak training rows.

Every input row ends up in exactly one place: a split file or quarantine.jsonl with its reason, so
rows_read == rows_kept + quarantined. A rerun with the same inputs and settings writes byte-identical
files; only timings.json, how long each stage took, changes.

Inputs are streamed, never held in memory: pass one (scan.py) reads and cleans each row once, writes
it to a temporary store on disk and keeps a few numbers per row; de-duplication, the split and the
leak check work on those numbers; pass two copies the kept rows into the split files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from dataclasses import asdict

import numpy as np

from tunelab.data.clean import CleanSettings, content_text, normalize_text
from tunelab.data.dedup import DEFAULT_THRESHOLD, find_leaks, first_near_duplicates
from tunelab.data.filters import REASON_CATEGORIES as FILTER_REASON_CATEGORIES
from tunelab.data.filters import FilterSettings
from tunelab.data.pii import PII_TYPES
from tunelab.data.quarantine import Quarantine
from tunelab.data.records import Rejected
from tunelab.data.report import write_data_report
from tunelab.data.rowstore import atomic_text_writer
from tunelab.data.scan import RowView, ScannedRows, ScanSettings, scan_inputs
from tunelab.data.split import content_hash, split_records
from tunelab.data.timing import StageClock, format_timings
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json
from tunelab.security import files as sealed

__all__ = ["format_summary", "format_timings", "normalize_text", "prepare_data", "read_timings", "reason_category"]

SPLIT_NAMES = ("train", "val", "test")
PII_MODES = ("report", "redact", "drop", "off")
ON_ERROR_MODES = ("raise", "quarantine")
TIMINGS_FILE = "timings.json"
MAX_AUTO_WORKERS = 8
AUTO_WORKERS_MIN_BYTES = 32_000_000
MAX_CLUSTER_EXAMPLES = 5  # near-duplicate clusters shown in summary.json
MAX_REMOVED_EXAMPLES = 5  # removed rows shown per cluster
SNIPPET_CHARS = 120

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
    *FILTER_REASON_CATEGORIES,  # their reasons start with their own prefixes ("too short: ", ...)
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
    filters: FilterSettings | None = None,
    workers: int | None = None,
) -> dict:
    """Read, normalize, filter, check for PII, de-duplicate and split ``inputs``; write the splits,
    quarantine.jsonl, summary.json, report.md and timings.json into ``out_dir`` and return the summary.

    ``filters``: quality filters (HTML stripping, token counts, languages, degenerate rows) applied
    after normalization; None applies none.
    ``pii``: ``report`` counts finds and changes nothing, ``redact`` replaces them with typed
    placeholders, ``drop`` quarantines rows that have any, ``off`` skips the check.
    ``near_dup_threshold``: the estimated Jaccard similarity of word 5-grams at which a row is a
    near duplicate of an earlier one (quarantined), and a val/test row leaks a train row
    (quarantined); None turns both checks off.
    ``workers``: processes that clean and sketch rows while this one reads; None: one per CPU core
    (up to 8) for inputs over 32 MB, else none, as starting them takes a second or two. The output
    is the same for any number.
    Nothing is written unless every row could be placed; a temporary folder (under TMPDIR) holds the
    rows in between, about as large as the input.
    """
    _check_settings(inputs, on_error, pii, near_dup_threshold, val_fraction, test_fraction)
    settings = ScanSettings(shape=shape, on_error=on_error, extra_columns=extra_columns, encoding=encoding,
                            clean=CleanSettings(normalize, filters, pii, near_dup_threshold),
                            workers=_worker_count(workers, inputs))
    summary_settings = {"shape": shape, "val_fraction": val_fraction, "test_fraction": test_fraction,
                        "seed": seed, "normalize": normalize, "near_dup_threshold": near_dup_threshold}
    if filters is not None:
        summary_settings["filters"] = _filter_settings(filters)
    clock = StageClock()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tunelab-prepare-") as work:
        quarantine = Quarantine(work, inputs, reason_category)
        try:
            rows = scan_inputs(inputs, Path(work), settings, quarantine, clock)
            try:
                summary = _place_rows(rows, quarantine, out, clock, inputs, summary_settings, pii)
            finally:
                rows.close()
        finally:
            quarantine.close()
    sealed.write_json(out / "summary.json", summary)  # quotes near-duplicate examples
    with clock.stage("report", summary["rows_kept"]):
        write_data_report(out, summary)
    atomic_write_json(out / TIMINGS_FILE, {"workers": settings.workers, **clock.report()})
    return summary


def _check_settings(inputs, on_error: str, pii: str, near_dup_threshold, val_fraction, test_fraction) -> None:
    """Settings problems, before any reading: on a large input they would otherwise surface late."""
    if not inputs:
        raise TunelabError("no input files given")
    if on_error not in ON_ERROR_MODES:
        raise TunelabError(f"on_error must be one of {', '.join(ON_ERROR_MODES)}; got {on_error!r}")
    if pii not in PII_MODES:
        raise TunelabError(f'pii must be one of {", ".join(PII_MODES)}, got "{pii}"')
    if near_dup_threshold is not None and not 0 < near_dup_threshold <= 1:
        raise TunelabError(f"near_dup_threshold must be above 0 and at most 1 (or None to turn the "
                           f"check off), got {near_dup_threshold}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise TunelabError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be at "
                           "least 0 and add up to less than 1")


def _worker_count(workers: int | None, inputs: list[str]) -> int:
    if workers is not None:
        if workers < 1:
            raise TunelabError(f"workers must be at least 1, got {workers}")
        return workers
    size = sum(Path(path).stat().st_size for path in inputs if Path(path).is_file())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_AUTO_WORKERS) if size > AUTO_WORKERS_MIN_BYTES else 1


def _filter_settings(filters: FilterSettings) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(filters).items()}


def _place_rows(rows: ScannedRows, quarantine: Quarantine, out: Path, clock: StageClock, inputs: list[str],
                settings: dict, pii: str) -> dict:
    """De-duplicate, split and check for leaks on the compact rows; write the split files and the
    quarantine (pass two). Returns the summary."""
    near_dup_threshold = settings["near_dup_threshold"]
    with clock.stage("exact_dedup", len(rows)):
        unique = _drop_exact_duplicates(rows, quarantine)
    clusters: list[dict] = []
    near_duplicates = leaks_removed = 0
    if near_dup_threshold is not None and rows.content is not None:  # None: the filters kept no row at all
        with clock.stage("near_dedup", len(unique)):
            unique, clusters, near_duplicates = _drop_near_duplicates(rows, unique, quarantine, near_dup_threshold)
    with clock.stage("split", len(unique)):
        splits = _split(rows, unique, settings["val_fraction"], settings["test_fraction"], settings["seed"],
                        quarantine)
    if near_dup_threshold is not None:
        with clock.stage("leaks", sum(len(split) for split in splits.values())):
            leaks_removed = _remove_leaks(rows, splits, quarantine, near_dup_threshold)
    kept = sum(len(split) for split in splits.values())
    quarantine_path = out / "quarantine.jsonl"
    with clock.stage("write", kept + len(quarantine)):
        hashes = {name: _write_split(out / f"{name}.jsonl", rows, split) for name, split in splits.items()}
        quarantine.write(quarantine_path)
    summary = {
        "inputs": [str(path) for path in inputs],
        "kind": rows.kind,
        "settings": settings,
        "rows_read": rows.rows_read,
        "rows_kept": kept,
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(quarantine.categories.items(), key=lambda item: (-item[1], item[0]))),
        "quarantine_file": str(quarantine_path),
        "splits": {name: len(split) for name, split in splits.items()},
        "pii_mode": pii,
        "pii": {pii_type: rows.pii_counts[pii_type] for pii_type in PII_TYPES if rows.pii_counts[pii_type]},
        "near_duplicates": near_duplicates,
        "leaks_removed": leaks_removed,
        "duplicate_clusters": clusters,
    }
    if rows.kind == "labeled":
        summary["labels"] = {name: _label_counts(rows, split) for name, split in splits.items()}
    summary["content_hash"] = hashes
    return summary


def _drop_exact_duplicates(rows: ScannedRows, quarantine: Quarantine) -> np.ndarray:
    """Rows whose content (meta such as ids aside) no earlier row has; later copies are quarantined."""
    first = rows.first_copies()
    for row in np.flatnonzero(first != np.arange(len(first))).tolist():
        original = int(first[row])
        reason = f"exact duplicate of {rows.source(original)} line {rows.line(original)}"
        quarantine.add(rows.rejected(row, reason), "exact_dedup")
    return np.flatnonzero(first == np.arange(len(first)))


def _drop_near_duplicates(
    rows: ScannedRows, unique: np.ndarray, quarantine: Quarantine, threshold: float
) -> tuple[np.ndarray, list[dict], int]:
    """Keep the first of each group of near duplicates, in input order. Returns the kept rows,
    example clusters (largest first) and how many were removed."""
    found = first_near_duplicates(rows.content, unique, threshold)
    for row, original, similarity in found:
        quarantine.add(rows.rejected(row, f"near duplicate of {rows.source(original)} line {rows.line(original)} "
                                          f"(similarity ~{similarity:.2f})"), "near_dedup")
    removed = np.array([row for row, _, _ in found], dtype=np.int64)
    originals = np.array([original for _, original, _ in found], dtype=np.int64)
    sizes = np.unique(originals, return_counts=True)
    largest = np.lexsort((sizes[0], -sizes[1]))[:MAX_CLUSTER_EXAMPLES]
    clusters = []
    for original, size in zip(sizes[0][largest].tolist(), sizes[1][largest].tolist()):
        members = np.flatnonzero(originals == original)[:MAX_REMOVED_EXAMPLES].tolist()
        clusters.append({
            "kept": _snippet(rows, original),
            "removed": [{**_snippet(rows, found[i][0]), "similarity": round(found[i][2], 2)} for i in members],
            "removed_total": size,
        })
    return unique[~np.isin(unique, removed)], clusters, len(found)


def _split(rows: ScannedRows, kept: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
           quarantine: Quarantine) -> dict[str, np.ndarray]:
    """The seeded, stratified split of ``split_records``, drawn over light views of the kept rows."""
    views = [RowView(rows, row) for row in kept.tolist()]
    removed: list[Rejected] = []
    parts = split_records(views, val_fraction, test_fraction, seed, quarantine=removed)
    for rejected in removed:
        quarantine.add(rejected, "split")
    return {name: np.array([view.row for view in part], dtype=np.int64)
            for name, part in zip(SPLIT_NAMES, parts, strict=True)}


def _remove_leaks(rows: ScannedRows, splits: dict[str, np.ndarray], quarantine: Quarantine,
                  threshold: float) -> int:
    """Move val/test rows whose input near-duplicates a train row's input to quarantine.

    Inputs (user turns, or the text) are compared rather than whole rows: a held-out question the
    model was trained on leaks even when the answers differ.
    """
    train = splits["train"]
    held_out = np.concatenate([splits["val"], splits["test"]])
    if not len(train) or not len(held_out):
        return 0
    leaks = find_leaks(rows.inputs, train, held_out, threshold)
    leaked = np.zeros(len(held_out), dtype=bool)
    for index, position in leaks:
        source = int(train[position])
        reason = f"leak: near duplicate of train row {rows.source(source)} line {rows.line(source)}"
        quarantine.add(rows.rejected(int(held_out[index]), reason), "leaks")
        leaked[index] = True
    val_size = len(splits["val"])
    splits["val"] = splits["val"][~leaked[:val_size]]
    splits["test"] = splits["test"][~leaked[val_size:]]
    return len(leaks)


def _write_split(path: Path, rows: ScannedRows, split: np.ndarray) -> str:
    """Copy ``split``'s rows into ``path`` in order; returns their content hash."""
    with atomic_text_writer(path) as f:
        def written():
            for row in split.tolist():
                line = rows.row_json(row)
                f.write(line)
                f.write("\n")
                yield json.loads(line)

        return content_hash(written())


def _label_counts(rows: ScannedRows, split: np.ndarray) -> dict[str, int]:
    counts = np.bincount(rows.label_ids(split), minlength=len(rows.label_names))
    return {label: int(counts[i]) for i, label in sorted(enumerate(rows.label_names), key=lambda x: x[1])
            if counts[i]}


def _snippet(rows: ScannedRows, row: int) -> dict:
    record = rows.record(row)
    return {"source": record.source, "line": record.line, "text": content_text(record)[:SNIPPET_CHARS]}


def read_timings(out_dir) -> dict:
    """timings.json of a prepared folder: rows, seconds and rows per second of each stage."""
    return json.loads((Path(out_dir) / TIMINGS_FILE).read_text(encoding="utf-8"))


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
