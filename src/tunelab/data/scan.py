"""Pass one of ``tunelab data prepare``: read every input row once, normalize, filter and check it
for PII, and keep only what the later stages need.

A row that survives is written to a RowStore on disk; memory keeps a few numbers per row (input
file, line, label, a 16-byte content key for exact duplicates), and its MinHash signatures and band
keys go to SketchFiles, also on disk. Rows that fail a stage go to the quarantine as they are found.
Reading happens here; the per-row cleaning (clean.RowCleaner) runs in worker processes when asked.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from tqdm.auto import tqdm

from tunelab.data.clean import (EXACT_KEY_BYTES, CleanedChunk, CleanSettings, Outcome, RowCleaner,
                                clean_in_worker, record_from_row, start_worker)
from tunelab.data.dedup import Sketches, SketchFile
from tunelab.data.filters import build_filter
from tunelab.data.formats import MAX_RAW_CHARS, common_kind, iter_records
from tunelab.data.quarantine import Quarantine
from tunelab.data.records import Record, Rejected
from tunelab.data.rowstore import RowStore
from tunelab.data.timing import StageClock
from tunelab.errors import DataError

CHUNK_ROWS = 1024  # records cleaned and sketched together (one numpy pass for their signatures)
CHUNKS_IN_FLIGHT_PER_WORKER = 2  # how far reading may run ahead of the workers
_NO_META = MappingProxyType({})


@dataclass(frozen=True)
class ScanSettings:
    shape: str = "auto"
    on_error: str = "quarantine"
    extra_columns: str = "error"
    encoding: str | None = None
    clean: CleanSettings = field(default_factory=CleanSettings)
    workers: int = 1  # processes that clean rows; 1: this one


class ScannedRows:
    """The rows that reached de-duplication, numbered in input order, as compact columns.

    ``content`` holds the sketches of what near-duplicate removal compares, ``inputs`` those of what
    the leak check compares (the same object unless rows are chat); both are None when near-duplicate
    checks are off.
    """

    def __init__(self, folder: Path, inputs: list[str]):
        self.folder = folder
        self.store = RowStore(folder / "rows.jsonl")
        self.sources = [str(path) for path in inputs]
        self.kind = ""
        self.rows_read = 0
        self.pii_counts: Counter = Counter()
        self.label_names: list[str] = []
        self.content: SketchFile | None = None
        self.inputs: SketchFile | None = None
        self._label_ids: dict[str, int] = {}
        self._source_ids = array("i")
        self._lines = array("q")
        self._labels = array("i")
        self._exact_keys = bytearray()
        self._origin_meta: dict[int, dict] = {}  # augmentation links, for the rows that carry them

    def __len__(self) -> int:
        return len(self.store)

    def add(self, kept: Outcome, source_id: int, line: int) -> None:
        number = self.store.append(kept.row)
        self._source_ids.append(source_id)
        self._lines.append(line)
        self._labels.append(-1 if kept.label is None else self._label_id(kept.label))
        self._exact_keys += kept.exact_key
        if kept.links:
            self._origin_meta[number] = kept.links

    def add_sketches(self, content: Sketches, inputs: Sketches | None) -> None:
        """Sketches of the rows just added. The first call decides whether inputs get sketches of
        their own: they do when rows are chat (a later odd row fails the one-kind check anyway)."""
        if self.content is None:
            self.content = SketchFile(self.folder, "content")
            self.inputs = SketchFile(self.folder, "inputs") if inputs is not None else self.content
        self.content.append(content)
        if self.inputs is not self.content:
            self.inputs.append(inputs if inputs is not None else content)

    def _label_id(self, label: str) -> int:
        if label not in self._label_ids:
            self._label_ids[label] = len(self.label_names)
            self.label_names.append(label)
        return self._label_ids[label]

    def source(self, row: int) -> str:
        return self.sources[self._source_ids[row]]

    def line(self, row: int) -> int:
        return self._lines[row]

    def label(self, row: int) -> str | None:
        label_id = self._labels[row]
        return None if label_id < 0 else self.label_names[label_id]

    def origin_meta(self, row: int) -> MappingProxyType | dict:
        return self._origin_meta.get(row, _NO_META)

    def row_json(self, row: int) -> str:
        """The row as written to the split files: ``Record.to_json()`` as one JSON line."""
        return self.store.read(row)

    def record(self, row: int) -> Record:
        return record_from_row(json.loads(self.store.read(row)), self.source(row), self.line(row))

    def rejected(self, row: int, reason: str) -> Rejected:
        return Rejected(self.source(row), self.line(row), reason, self.store.read(row)[:MAX_RAW_CHARS])

    def label_ids(self, rows: np.ndarray) -> np.ndarray:
        """Label numbers (indexes into ``label_names``) of ``rows``; -1 for rows without a label."""
        return np.asarray(self._labels, dtype=np.int64)[rows]

    def first_copies(self) -> np.ndarray:
        """For each row, the first row with the same content (itself when it is the first)."""
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        keys = np.frombuffer(bytes(self._exact_keys), dtype=f"V{EXACT_KEY_BYTES}")
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return first[inverse.reshape(-1)]

    def close(self) -> None:
        self.store.close()
        for sketches in {id(s): s for s in (self.content, self.inputs) if s is not None}.values():
            sketches.close()


def scan_inputs(inputs: list[str], folder: Path, settings: ScanSettings, quarantine: Quarantine,
                clock: StageClock) -> ScannedRows:
    """Pass one over ``inputs``. Raises DataError as ``prepare_data`` documents: a file-level
    problem, a file with no valid rows, the first bad row under ``on_error="raise"``, mixed kinds."""
    rows = ScannedRows(folder, inputs)
    pool = None
    try:
        if settings.workers > 1:
            if settings.clean.filters is not None:
                # a bad tokenizer or language code must fail here: a pool restarts failing workers forever
                build_filter(settings.clean.filters)
            pool = _worker_context().Pool(settings.workers, start_worker, (settings.clean,))
        scanner = _Scanner(rows, settings, quarantine, clock, pool)
        with tqdm(desc="data prepare: reading", unit=" rows", leave=False, disable=None) as progress:
            for source_id, path in enumerate(inputs):
                scanner.read_file(source_id, path, progress)
        scanner.finish()
    except BaseException:
        rows.close()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return rows


def _worker_context():
    """Fork where the platform has it: workers start at once, and a caller's script without a
    ``__main__`` guard is not run again in each of them, as it would be under spawn."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


class _Scanner:
    """Reads the inputs in this process and hands chunks of records to a RowCleaner: its own, or
    the worker processes' (a few chunks in flight per worker, so memory stays flat). Results are
    applied in input order, so the outcome does not depend on the number of workers."""

    def __init__(self, rows: ScannedRows, settings: ScanSettings, quarantine: Quarantine, clock: StageClock,
                 pool):
        self.rows = rows
        self.settings = settings
        self.quarantine = quarantine
        self.clock = clock
        self.pool = pool
        self.cleaner = None if pool is not None else RowCleaner(settings.clean)
        self.in_flight: deque = deque()
        self.pending: list[Record] = []
        self.pending_sources: list[int] = []
        self.deferred_error: DataError | None = None  # the first row that normalization rejects, under "raise"
        self.kind_codes = bytearray()  # one byte per row: its kind's place in first_of_kind
        self.first_of_kind: dict[str, Record] = {}
        self.kind_code: dict[str, int] = {}

    def read_file(self, source_id: int, path, progress) -> None:
        items = iter_records(path, self.settings.shape, self.settings.extra_columns, self.settings.encoding)
        valid, rejected, first_rejected = 0, 0, None
        while True:
            start = time.perf_counter()
            item = next(items, None)
            self.clock.add("read", time.perf_counter() - start, item is not None)
            if item is None:
                break
            self.rows.rows_read += 1
            progress.update()
            if isinstance(item, Rejected):
                if self.settings.on_error == "raise":
                    raise DataError(item.source, item.reason, item.line)
                rejected += 1
                first_rejected = first_rejected or item
                self.quarantine.add(item, "read")
                continue
            valid += 1
            self.pending.append(item)
            self.pending_sources.append(source_id)
            if len(self.pending) >= CHUNK_ROWS:
                self.submit()
        if not valid:  # as read_records: a file none of whose rows can be read is a wrong file
            raise DataError(path, f"no valid rows: {rejected} rejected; first: line {first_rejected.line}: "
                                  f"{first_rejected.reason}")

    def submit(self) -> None:
        records, sources = self.pending, self.pending_sources
        self.pending, self.pending_sources = [], []
        if self.pool is None:
            self.apply(records, sources, self.cleaner.clean(records))
            return
        self.in_flight.append((records, sources, self.pool.apply_async(clean_in_worker, (records,))))
        while len(self.in_flight) > CHUNKS_IN_FLIGHT_PER_WORKER * self.settings.workers:
            self.apply_oldest()

    def apply_oldest(self) -> None:
        records, sources, result = self.in_flight.popleft()
        start = time.perf_counter()
        cleaned = result.get()
        self.clock.add("wait_for_workers", time.perf_counter() - start)
        self.apply(records, sources, cleaned)

    def apply(self, records: list[Record], sources: list[int], cleaned: CleanedChunk) -> None:
        """Record what became of each row of a chunk, in input order."""
        rows, quarantine = self.rows, self.quarantine
        start = time.perf_counter()
        for record, source_id, outcome in zip(records, sources, cleaned.outcomes, strict=True):
            if outcome.kind is not None:
                self.observe_kind(record, outcome.kind)
            if outcome.stage == "keep":
                rows.add(outcome, source_id, record.line)
            elif outcome.stage == "normalize" and self.settings.on_error == "raise":
                # raised once every file is read, as a bad row in a later file is reported first
                self.deferred_error = self.deferred_error or DataError(record.source, outcome.reason, record.line)
            else:
                quarantine.add(Rejected(record.source, record.line, outcome.reason, outcome.row), outcome.stage)
        rows.pii_counts.update(cleaned.pii_counts)
        if cleaned.content is not None:
            rows.add_sketches(cleaned.content, cleaned.inputs)
        self.clock.add("spool", time.perf_counter() - start, len(records))
        for stage, (seconds, count) in cleaned.stages.items():
            self.clock.add(stage, seconds, count)

    def observe_kind(self, record: Record, kind: str) -> None:
        if kind not in self.first_of_kind:
            self.first_of_kind[kind] = record
            self.kind_code[kind] = len(self.kind_code)
        self.kind_codes.append(self.kind_code[kind])

    def finish(self) -> None:
        if self.pending:
            self.submit()
        while self.in_flight:
            self.apply_oldest()
        if self.deferred_error is not None:
            raise self.deferred_error
        # common_kind reads each row's kind, and the source and line of the first row of an odd kind:
        # the first record of each kind stands in for every row of that kind.
        representatives = list(self.first_of_kind.values())
        self.rows.kind = common_kind(representatives[code] for code in self.kind_codes)


class RowView:
    """One kept row as ``split_records`` sees a Record: kind, label, source, line and the meta it reads
    (augmentation links only) come from the compact columns; ``to_json`` reads the row back from disk."""

    __slots__ = ("_rows", "row")

    def __init__(self, rows: ScannedRows, row: int):
        self._rows = rows
        self.row = row

    @property
    def kind(self) -> str:
        return self._rows.kind

    @property
    def label(self) -> str | None:
        return self._rows.label(self.row)

    @property
    def source(self) -> str:
        return self._rows.source(self.row)

    @property
    def line(self) -> int:
        return self._rows.line(self.row)

    @property
    def meta(self):
        return self._rows.origin_meta(self.row)

    def to_json(self) -> dict:
        return json.loads(self._rows.row_json(self.row))
