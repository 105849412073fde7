"""Row-level cleaning for ``tunelab data prepare``: text normalization, the texts that duplicate and
leak checks compare, and ``RowCleaner``, which runs normalize -> filters -> PII -> sketches on a
chunk of records.

Everything here looks at one record at a time, so the pipeline can apply it while it streams the
input, in its own process or spread over worker processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from typing import NamedTuple

from tunelab.data.dedup import MinHasher, Sketches
from tunelab.data.filters import FilterSettings, build_filter
from tunelab.data.formats import MAX_RAW_CHARS
from tunelab.data.pii import PII_TYPES, redact_record
from tunelab.data.records import Record
from tunelab.data.split import AUGMENTED_FROM, ROW_HASH

EXACT_KEY_BYTES = 16  # of a sha256: collisions are out of reach at any dataset size

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls except \t and \n
_INNER_BLANKS = re.compile(r"(?<=[^ \t\n])[ \t]{2,}")  # runs after text; indentation stays


def normalize_text(text: str) -> str:
    """NFKC, no control characters but newline and tab, inner runs of spaces/tabs collapsed to
    one space, ends stripped. Leading indentation stays, so code in answers keeps its meaning."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _INNER_BLANKS.sub(" ", _CONTROL.sub("", text)).strip()


def normalized(record: Record) -> Record | str:
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


def content_text(record: Record) -> str:
    """What near-duplicate removal compares: user and assistant turns (a long system prompt shared
    by every row would make all rows look alike), or the text (labels aside)."""
    if record.kind == "chat":
        return "\n".join(t["content"] for t in record.messages if t["role"] != "system")
    return record.text


def input_text(record: Record) -> str:
    """What the leak check compares: the user turns, or the text. A held-out question the model was
    trained on leaks even when the answers differ."""
    if record.kind == "chat":
        return "\n".join(t["content"] for t in record.messages if t["role"] == "user")
    return record.text


def record_from_row(row: dict, source: str = "", line: int = 0) -> Record:
    """The Record a canonical JSON row (``Record.to_json()``) was written from."""
    meta = row.get("meta", {})
    if "messages" in row:
        return Record("chat", messages=row["messages"], source=source, line=line, meta=meta)
    if "label" in row:
        return Record("labeled", text=row["text"], label=row["label"], source=source, line=line, meta=meta)
    return Record("text", text=row["text"], source=source, line=line, meta=meta)


# Cleaning chunks of records: the per-row work of pass one, in this process or in a worker process.


class Outcome(NamedTuple):
    """What became of one record. ``stage`` is "keep", or the stage that rejected it (normalize,
    filter, pii) with ``reason``; ``row`` is the JSON row to keep, or the raw text to quarantine.
    ``kind`` is None when normalization rejected the record."""

    kind: str | None
    stage: str
    reason: str | None = None
    row: str = ""
    exact_key: bytes = b""  # kept rows: a hash of the content without meta, equal for exact duplicates
    label: str | None = None
    links: dict | None = None  # kept rows: their augmentation meta (augmented_from, row_hash), if any


@dataclass
class CleanedChunk:
    outcomes: list[Outcome]
    pii_counts: Counter
    stages: dict[str, tuple[float, int]]  # per stage: seconds and rows that went in, for the timings
    content: Sketches | None  # kept rows' sketches of what near-duplicate removal compares
    inputs: Sketches | None  # kept rows' sketches of their inputs (user turns), when any row is chat


@dataclass(frozen=True)
class CleanSettings:
    normalize: bool = True
    filters: FilterSettings | None = None
    pii: str = "report"
    near_dup_threshold: float | None = None  # None: no sketches


class RowCleaner:
    """Normalizes, filters and PII-checks records, and sketches those it keeps. Built once per
    process: loading a filter's tokenizer or language model takes a while."""

    def __init__(self, settings: CleanSettings):
        self.settings = settings
        self.row_filter = None if settings.filters is None else build_filter(settings.filters)
        threshold = settings.near_dup_threshold
        self.minhasher = None if threshold is None else MinHasher(threshold)
        self.seconds: Counter = Counter()  # these three are per chunk
        self.rows: Counter = Counter()
        self.pii_counts: Counter = Counter()

    def clean(self, records: list[Record]) -> CleanedChunk:
        self.seconds, self.rows, self.pii_counts = Counter(), Counter(), Counter()
        outcomes, kept = [], []
        for record in records:
            outcome, cleaned = self._clean_one(record)
            outcomes.append(outcome)
            if cleaned is not None:
                kept.append(cleaned)
        content = inputs = None
        if self.minhasher is not None and kept:
            start = time.perf_counter()
            contents = [content_text(r) for r in kept]
            if any(r.kind == "chat" for r in kept):
                content, inputs = self.minhasher.sketch_pairs(contents, [input_text(r) for r in kept])
            else:
                content = self.minhasher.sketch(contents)
            self._took("minhash", start, len(kept))
        stages = {stage: (self.seconds[stage], self.rows[stage]) for stage in self.rows}
        return CleanedChunk(outcomes, self.pii_counts, stages, content, inputs)

    def _took(self, stage: str, start: float, rows: int = 1) -> None:
        self.seconds[stage] += time.perf_counter() - start
        self.rows[stage] += rows

    def _clean_one(self, record: Record) -> tuple[Outcome, Record | None]:
        """The record's outcome, and the record as kept (None when rejected)."""
        settings, clock = self.settings, time.perf_counter
        if settings.normalize:
            start = clock()
            result = normalized(record)
            self._took("normalize", start)
            if isinstance(result, str):  # quarantined as read, before normalization
                return Outcome(None, "normalize", result, _raw(record)), None
            record = result
        if self.row_filter is not None:
            start = clock()
            result = self.row_filter(record)
            self._took("filter", start)
            if isinstance(result, str):
                return Outcome(record.kind, "filter", result, _raw(record)), None
            record = result
        if settings.pii != "off":
            start = clock()
            result, found = redact_record(record, settings.pii)
            self.pii_counts.update(found)
            self._took("pii", start)
            if result is None:  # quarantined redacted: no PII is copied into the output folder
                redacted, _ = redact_record(record, "redact")
                types = ", ".join(pii_type for pii_type in PII_TYPES if found[pii_type])
                return Outcome(record.kind, "pii", f"contains PII: {types}", _raw(redacted)), None
            record = result
        start = clock()
        row = record.to_json()
        line = json.dumps(row, ensure_ascii=False)
        row.pop("meta", None)  # ids and other meta do not make rows different
        exact_key = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).digest()
        links = {name: record.meta[name] for name in (AUGMENTED_FROM, ROW_HASH) if name in record.meta}
        self._took("encode", start)
        kept = Outcome(record.kind, "keep", None, line, exact_key[:EXACT_KEY_BYTES], record.label, links or None)
        return kept, record


def _raw(record: Record) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False)[:MAX_RAW_CHARS]


# One cleaner per worker process, built by its initializer.
_WORKER_CLEANER: RowCleaner | None = None


def start_worker(settings: CleanSettings) -> None:
    """Pool initializer: build this worker's cleaner once."""
    global _WORKER_CLEANER
    _WORKER_CLEANER = RowCleaner(settings)


def clean_in_worker(records: list[Record]) -> CleanedChunk:
    return _WORKER_CLEANER.clean(records)
