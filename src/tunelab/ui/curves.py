"""A run's curves as the dashboard draws them: the rows of ``train_log.jsonl``, read whole or from where the
last read stopped (the live view follows a file that the training process is still appending to).

A line the trainer has not finished writing (no newline yet) is left for the next read, never parsed
half; a line that does not parse (a process killed mid-write long ago) is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunelab.runs.folder import RunFolder

# the columns a curve may show; anything else in a row (elapsed, grad_norm...) is kept for the tables
CURVE_COLUMNS = ("loss", "val_loss", "eval_loss", "learning_rate", "grad_norm")


def clean(row: dict) -> dict | None:
    """``row`` with finite numbers only, or None when it has no step."""
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        return None
    return {k: v for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def read_from(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Rows whose lines are complete after byte ``offset``, and the offset to read from next time."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # only whole lines; the rest is still being written
    rows = []
    for line in data[:end].splitlines():
        try:
            row = clean(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if row is not None:
            rows.append(row)
    return rows, offset + end


def log_rows(run_path: str | Path) -> list[dict]:
    """Every row of the run's train_log.jsonl."""
    return read_from(RunFolder(run_path).train_log_path)[0]
