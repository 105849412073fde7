"""Seeded train/val/test splits, stratified by label, and content hashes that identify a split.

Augmented rows (``tunelab data augment``) carry ``meta.augmented_from``, the row hash of their source.
They never enter val or test: the split is drawn over the other rows, each augmented row follows its
source into train, and augmented copies of val/test rows are quarantined, so evaluation never scores
a row whose paraphrase or edited copy was trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable

from tunelab.data.formats import MAX_RAW_CHARS
from tunelab.data.records import Record, Rejected
from tunelab.errors import DataError, TunelabError

AUGMENTED_FROM = "augmented_from"  # meta key of an augmented row: the row hash of its source
ROW_HASH = "row_hash"  # meta key of a source row: its own row hash, as written by data augment
HELD_OUT_COPY = "augmented copy of a val/test row"


def split_records(
    records: list[Record],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool = True,
    quarantine: list[Rejected] | None = None,
) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, test), each record in exactly one or in ``quarantine``, reproducible from ``seed``.

    Labeled records are stratified: every label gets its share of each split, within one record.
    A requested (non-zero) val or test split always gets at least one record, and train is never
    empty; inputs too small for that raise DataError.

    Augmented records are not counted in the split sizes and go to train with their source; the
    copies of val/test records are appended to ``quarantine``, which is required when there are any.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise TunelabError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be at least 0 "
            "and add up to less than 1"
        )
    originals = [r for r in records if not is_augmented(r)]
    copies = [r for r in records if is_augmented(r)]
    if copies and not originals:
        raise DataError(", ".join(sorted({r.source for r in copies})),
                        "only augmented rows, none of their source rows: nothing to split into val/test")
    sizes = _split_sizes(originals, val_fraction, test_fraction)
    rng = random.Random(seed)
    if stratify and originals and all(r.kind == "labeled" for r in originals):
        groups: dict[str, list[Record]] = {}
        for record in originals:
            groups.setdefault(record.label, []).append(record)
        ordered = []
        for label in sorted(groups):
            rng.shuffle(groups[label])
            ordered += groups[label]
    else:
        ordered = list(originals)
        rng.shuffle(ordered)
    splits: tuple[list[Record], list[Record], list[Record]] = ([], [], [])
    for record, index in zip(ordered, _interleave(sizes), strict=True):
        splits[index].append(record)
    if copies:
        splits[0].extend(drop_copies_of(copies, splits[1] + splits[2], quarantine))
    for split in splits:  # stratified order is grouped by label; training must not see it sorted
        rng.shuffle(split)
    return splits


def _split_sizes(records: list[Record], val_fraction: float, test_fraction: float) -> list[int]:
    """[train, val, test] sizes: the rounded shares, at least one for each requested split."""
    n = len(records)
    val = max(round(n * val_fraction), 1) if val_fraction > 0 else 0
    test = max(round(n * test_fraction), 1) if test_fraction > 0 else 0
    wanted = [name for name, size in (("val", val), ("test", test)) if size]
    if n < 1 + len(wanted):
        where = ", ".join(sorted({r.source for r in records})) or "data"
        if not records:
            raise DataError(where, "no records to split")
        raise DataError(
            where,
            f"only {n} record(s): too few for a train split plus a non-empty "
            f"{' and '.join(wanted)} split{'s' if len(wanted) > 1 else ''}; add rows, or set "
            "val_fraction/test_fraction to 0",
        )
    while n - val - test < 1:  # rounding up small shares can crowd out train
        if val >= test:
            val -= 1
        else:
            test -= 1
    return [n - val - test, val, test]


def _interleave(sizes: list[int]) -> list[int]:
    """Which split each position of the ordered records goes to.

    Each position goes to the split furthest behind its share so far, so every stretch of the order
    (one label's records, when stratified) is divided in proportion to ``sizes``.
    """
    n = sum(sizes)
    counts = [0] * len(sizes)
    assignment = []
    for position in range(1, n + 1):
        # shortfall of split i, scaled by n to stay in integers: share * position - count
        index = max(
            (i for i in range(len(sizes)) if counts[i] < sizes[i]),
            key=lambda i: sizes[i] * position - counts[i] * n,
        )
        counts[index] += 1
        assignment.append(index)
    return assignment


def row_hash(record: Record) -> str:
    """A row's identity for augmentation links: sha256 of its canonical JSON without meta, 16 hex digits."""
    row = record.to_json()
    row.pop("meta", None)
    return content_hash([row])[:16]


def is_augmented(record: Record) -> bool:
    return bool(record.meta.get(AUGMENTED_FROM))


def origin(record: Record) -> str:
    """The row hash of the row a record stems from: its source's for an augmented record, else its own
    (as written in meta when the text was since normalized or redacted)."""
    return str(record.meta.get(AUGMENTED_FROM) or record.meta.get(ROW_HASH) or row_hash(record))


def drop_copies_of(records: list[Record], held_out: list[Record],
                   quarantine: list[Rejected] | None) -> list[Record]:
    """``records`` without the augmented copies of ``held_out`` rows (and of their sources), which
    go to ``quarantine``; None there is an error when there is any such copy, as nothing is dropped
    silently."""
    held_out_origins = {origin(r) for r in held_out}
    kept, removed = [], []
    for record in records:
        (removed if is_augmented(record) and origin(record) in held_out_origins else kept).append(record)
    if removed and quarantine is None:
        raise TunelabError(f"split: {len(removed)} augmented copies of val/test rows must be removed, but "
                           "the caller gave no quarantine list to record them")
    for record in removed:
        quarantine.append(rejected(record, f"{HELD_OUT_COPY}: its source {origin(record)} is held out"))
    return kept


def drop_augmented(records: list[Record], quarantine: list[Rejected], split: str) -> list[Record]:
    """A given val or test file without its augmented rows (quarantined): evaluation scores originals."""
    for record in records:
        if is_augmented(record):
            quarantine.append(rejected(record, f"augmented row in the {split} data: {split} keeps original "
                                               "rows only"))
    return [r for r in records if not is_augmented(r)]


def rejected(record: Record, reason: str) -> Rejected:
    """A record removed after reading, for the quarantine file."""
    raw = json.dumps(record.to_json(), ensure_ascii=False)[:MAX_RAW_CHARS]
    return Rejected(record.source, record.line, reason, raw)


def content_hash(rows: Iterable[dict]) -> str:
    """sha256 over canonical JSON lines (sorted keys, compact), so equal data gives an equal hash."""
    digest = hashlib.sha256()
    for row in rows:
        line = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()
