"""Multi-task mixing: several datasets, each split on its own, their training rows mixed by weight.

Each source keeps its own train/val/test split, so its held-out rows never leak into another source's
training rows. Only the training rows are resampled, to the shares the weights ask for; every record
carries its source's name in ``meta["mix_source"]`` so evaluation can report metrics per source.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from tunelab.data.formats import common_kind
from tunelab.data.records import Record
from tunelab.errors import DataError

SOURCE_KEY = "mix_source"

# One source after its own split: (train, val, test).
SourceSplits = tuple[list[Record], list[Record], list[Record]]


def source_of(record: Record) -> str:
    return record.meta.get(SOURCE_KEY, "")


def count_by_source(records: list[Record]) -> dict[str, int]:
    return dict(Counter(source_of(r) for r in records))


def shares(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``; the largest remainders get the rounding, so they sum up."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])  # stable: ties keep order
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def resample(records: list[Record], count: int, rng: random.Random) -> list[Record]:
    """``count`` records: each one ``count // len(records)`` times, plus a sample of the rest without repetition."""
    repeats, rest = divmod(count, len(records))
    return records * repeats + rng.sample(records, rest)


def mix_sources(sources: dict[str, SourceSplits], weights: dict[str, float], seed: int,
                max_examples: int | None = None) -> tuple[SourceSplits, dict]:
    """Tag every record with its source, mix the training rows by weight, and join val and test.

    Returns ((train, val, test), summary) where the summary holds the weights and the training rows per
    source before mixing, for data_summary.json. All sources must hold one kind of record.
    """
    kinds = {}
    for name, splits in sources.items():
        for records in splits:
            for record in records:
                record.meta[SOURCE_KEY] = name
        kinds[name] = common_kind(splits[0] + splits[1] + splits[2])
    first = next(iter(sources))
    for name, kind in kinds.items():
        if kind != kinds[first]:
            raise DataError(sources[name][0][0].source, f"data.mix source {name} holds {kind} records but "
                            f"{first} holds {kinds[first]}; every source must hold the same kind")
    before = {name: len(splits[0]) for name, splits in sources.items()}
    total = sum(before.values())
    if max_examples:
        total = min(total, max_examples)
    rng = random.Random(seed)
    train: list[Record] = []
    for (name, splits), count in zip(sources.items(), shares(total, [weights[name] for name in sources])):
        train += resample(splits[0], count, rng)
    rng.shuffle(train)
    val = [r for splits in sources.values() for r in splits[1]]
    test = [r for splits in sources.values() for r in splits[2]]
    return (train, val, test), {"mix_weights": dict(weights), "train_by_source_before_mixing": before}
