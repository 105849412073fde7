"""What encryption at rest costs: the same work with and without a master key, side by side in one run.

1. Writing and reading a JSON-lines file of --rows rows (tunelab's own writer and reader, ``security.files``).
2. ``tunelab data prepare`` on a file of --rows labelled reviews, in a child process, with and without
   ``TUNELAB_KEY``.

Each is run --repeats times, alternating, and the median is kept. Writes benchmarks/results/encryption_overhead.md
(and .json) and prints the table.

    python benchmarks/encryption_overhead.py               # 200,000 rows
    python benchmarks/encryption_overhead.py --rows 20000  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SENTENCES = ROOT / "data" / "examples" / "movie_sentiment.jsonl"


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or platform.machine()


def reviews(count: int) -> list[dict]:
    base = [json.loads(line) for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"text": f"{base[i % len(base)]['text']} (review {i})", "label": base[i % len(base)]["label"]}
            for i in range(count)]


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def file_round_trip(folder: Path, rows: list[dict], key: str | None) -> tuple[float, float, int]:
    from tunelab.security import files

    os.environ.pop("TUNELAB_KEY", None)
    if key:
        os.environ["TUNELAB_KEY"] = key
    path = folder / ("sealed.jsonl" if key else "plain.jsonl")
    write = timed(lambda: files.write_jsonl(path, rows))
    read = timed(lambda: sum(1 for _ in files.iter_lines(path)))
    os.environ.pop("TUNELAB_KEY", None)
    return write, read, path.stat().st_size


def prepare(folder: Path, data: Path, key: str | None) -> float:
    env = {**os.environ, "TUNELAB_HOME": str(folder / "home")}
    env.pop("TUNELAB_KEY", None)
    if key:
        env["TUNELAB_KEY"] = key
    out = folder / ("prepared-sealed" if key else "prepared-plain")
    command = [sys.executable, "-m", "tunelab.cli", "data", "prepare", str(data), "--out", str(out)]
    return timed(lambda: subprocess.run(command, env=env, check=True, capture_output=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    key = os.urandom(32).hex()
    rows = reviews(args.rows)
    figures: dict[str, list] = {"write_plain": [], "write_sealed": [], "read_plain": [], "read_sealed": [],
                                "prepare_plain": [], "prepare_sealed": []}
    with tempfile.TemporaryDirectory(prefix="tunelab-encryption-bench-") as tmp:
        folder = Path(tmp)
        data = folder / "reviews.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        sizes = {}
        for _ in range(args.repeats):
            for name, used in (("plain", None), ("sealed", key)):
                write, read, sizes[name] = file_round_trip(folder, rows, used)
                figures[f"write_{name}"].append(write)
                figures[f"read_{name}"].append(read)
                figures[f"prepare_{name}"].append(prepare(folder, data, used))
    median = {name: statistics.median(values) for name, values in figures.items()}
    lines = [f"# Encryption at rest: overhead ({args.rows:,} rows, median of {args.repeats}; {machine()})", "",
             "| work | no key (s) | with a key (s) | ratio |", "|---|---|---|---|"]
    for work, label in (("write", "write JSON lines (security.files)"), ("read", "read them back, line by line"),
                        ("prepare", "tunelab data prepare (child process)")):
        plain, sealed = median[f"{work}_plain"], median[f"{work}_sealed"]
        lines.append(f"| {label} | {plain:.2f} | {sealed:.2f} | {sealed / plain:.2f}x |")
    lines += ["", f"File size: {sizes['plain']:,} bytes plain, {sizes['sealed']:,} encrypted "
                  f"(+{sizes['sealed'] - sizes['plain']:,}: a 171-byte header and a 16-byte tag per 64 KiB)."]
    text = "\n".join(lines) + "\n"
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "encryption_overhead.md").write_text(text, encoding="utf-8")
    (results / "encryption_overhead.json").write_text(json.dumps({"rows": args.rows, "machine": machine(),
                                                                  "seconds": figures, "sizes": sizes}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
