"""The quarantine of ``tunelab data prepare``: every removed row with its reason, in input order.

Stages find rejects in their own order (a bad row while reading, a duplicate only once all rows are
known, a leak after the split), so each reject is spooled to disk as it is found, with its place in
the input, and ``write`` puts them in order: by input file, line, then stage.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tunelab.data.records import Rejected
from tunelab.data.rowstore import RowStore, atomic_text_writer

STAGES = ("read", "normalize", "filter", "pii", "exact_dedup", "near_dedup", "split", "leaks")


class Quarantine:
    """Rejected rows spooled to ``folder``; ``categorize(reason)`` names each one's kind for the
    summary counts."""

    def __init__(self, folder: str | Path, inputs: Sequence[str], categorize: Callable[[str], str]):
        self._spool = RowStore(Path(folder) / "quarantine.spool")
        self._input_order = {str(path): i for i, path in enumerate(inputs)}
        self._categorize = categorize
        self._input_rank = array("q")
        self._line = array("q")
        self._stage = array("b")
        self.categories: Counter = Counter()

    def __len__(self) -> int:
        return len(self._spool)

    def add(self, rejected: Rejected, stage: str) -> None:
        self._spool.append(json.dumps(rejected.to_json(), ensure_ascii=False))
        self._input_rank.append(self._input_order.get(rejected.source, len(self._input_order)))
        self._line.append(rejected.line)
        self._stage.append(STAGES.index(stage))
        self.categories[self._categorize(rejected.reason)] += 1

    def write(self, path: str | Path) -> None:
        """quarantine.jsonl: by input file, line and stage; rows equal in all three in the order found."""
        order = np.lexsort((np.arange(len(self)), np.asarray(self._stage), np.asarray(self._line),
                            np.asarray(self._input_rank)))
        with atomic_text_writer(path) as f:
            for i in order.tolist():
                f.write(self._spool.read(i))
                f.write("\n")

    def close(self) -> None:
        self._spool.close()
