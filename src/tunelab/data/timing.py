"""Seconds and rows per stage of a data pipeline run, to see where the time goes and how it scales."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tunelab.memory import peak_rss_mb


class StageClock:
    """Accumulates each stage's seconds and the rows that went into it. Stages that interleave row by
    row (reading, cleaning) add their time per row or chunk; whole-dataset stages use ``stage``.
    Time spent in worker processes is added up over the workers."""

    def __init__(self):
        self._seconds: dict[str, float] = {}
        self._rows: dict[str, int] = {}
        self._started = time.perf_counter()

    def add(self, stage: str, seconds: float, rows: int = 0) -> None:
        self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
        self._rows[stage] = self._rows.get(stage, 0) + rows

    @contextmanager
    def stage(self, name: str, rows: int) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start, rows)

    def report(self) -> dict:
        """{"stages": {name: {rows, seconds, rows_per_second}}, "total_seconds", "peak_rss_mb"}."""
        stages = {}
        for name, seconds in self._seconds.items():
            rows = self._rows[name]
            stages[name] = {"rows": rows, "seconds": round(seconds, 3),
                            "rows_per_second": round(rows / seconds) if seconds > 0 and rows else None}
        return {"stages": stages, "total_seconds": round(time.perf_counter() - self._started, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1)}


def format_timings(timings: dict) -> str:
    """The per-stage table ``tunelab data prepare`` prints."""
    width = max((len(name) for name in timings["stages"]), default=5)
    lines = [f"  {'stage':<{width}}  {'rows':>10}  {'seconds':>9}  {'rows/s':>10}"]
    for name, stage in timings["stages"].items():
        speed = "-" if stage["rows_per_second"] is None else f"{stage['rows_per_second']:,}"
        lines.append(f"  {name:<{width}}  {stage['rows']:>10,}  {stage['seconds']:>9.2f}  {speed:>10}")
    workers = timings.get("workers", 1)
    where = f"; cleaning in {workers} worker processes, their seconds added up" if workers > 1 else ""
    return "\n".join([f"Timings ({timings['total_seconds']:.1f} s in all, peak memory of this process "
                      f"{timings['peak_rss_mb']:,.0f} MB{where}):", *lines])
