"""Seeded train/val/test splits, stratified by label, and content hashes that identify a split."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable

from tunelab.data.records import Record
from tunelab.errors import DataError, TunelabError


def split_records(
    records: list[Record],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool = True,
) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, test), each record in exactly one, reproducible from ``seed``.

    Labeled records are stratified: every label gets its share of each split, within one record.
    A requested (non-zero) val or test split always gets at least one record, and train is never
    empty; inputs too small for that raise DataError.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise TunelabError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be at least 0 "
            "and add up to less than 1"
        )
    sizes = _split_sizes(records, val_fraction, test_fraction)
    rng = random.Random(seed)
    if stratify and records and all(r.kind == "labeled" for r in records):
        groups: dict[str, list[Record]] = {}
        for record in records:
            groups.setdefault(record.label, []).append(record)
        ordered = []
        for label in sorted(groups):
            rng.shuffle(groups[label])
            ordered += groups[label]
    else:
        ordered = list(records)
        rng.shuffle(ordered)
    splits: tuple[list[Record], list[Record], list[Record]] = ([], [], [])
    for record, index in zip(ordered, _interleave(sizes), strict=True):
        splits[index].append(record)
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


def content_hash(rows: Iterable[dict]) -> str:
    """sha256 over canonical JSON lines (sorted keys, compact), so equal data gives an equal hash."""
    digest = hashlib.sha256()
    for row in rows:
        line = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()
