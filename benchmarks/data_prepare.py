"""`tunelab data prepare` at scale: rows per second of each stage, wall time and peak memory.

Builds a synthetic JSONL file, deterministic from --seed, out of the bundled movie-review sentences
(data/examples/movie_sentiment.jsonl): chat rows in the shapes people have (prompt/completion, alpaca,
messages with a system prompt, multi-turn chats, some with ids), with injected exact duplicates,
near duplicates (case and punctuation changes, one word changed in a long row), repeated questions
with new answers (leaks once the split separates them), PII (emails, phone numbers, IP addresses)
and malformed lines. Runs `tunelab data prepare` on it in a child process at two sizes, ten times
apart, and measures the child's wall time and peak RSS, so the table shows whether memory grows
with the file.

    python benchmarks/data_prepare.py                 # 100,000 and 1,000,000 rows
    python benchmarks/data_prepare.py --rows 50000    # 5,000 and 50,000 rows
    python benchmarks/data_prepare.py --quick         # 2,000 and 20,000 rows, a smoke run

Writes benchmarks/results/data_prepare.md (and .json with every raw number) and prints the table;
--quick writes data_prepare_quick.* instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SENTENCES = ROOT / "data" / "examples" / "movie_sentiment.jsonl"
GOALS = {"max_seconds_1m": 600, "max_peak_rss_mb": 4096}

INSTRUCTIONS = (
    "Is this movie review positive or negative?",
    "Classify the sentiment of the following review.",
    "Read the review and tell me whether the critic liked the film.",
    "What is the sentiment of this review? Answer positive or negative.",
    "Decide if the reviewer recommends the movie.",
    "Label the review below as positive or negative.",
)
SYSTEM_PROMPTS = (
    "You are a careful film critic's assistant. Answer briefly.",
    "You label movie reviews by sentiment.",
)
# Shares of each kind of row; the rest are fresh rows.
MIX = {"exact_duplicate": 0.04, "near_duplicate": 0.03, "leak": 0.01, "pii": 0.01, "malformed": 0.001}
RECENT_ROWS = 20_000  # earlier rows that duplicates are copied from (keeps the generator's memory flat)


# ---------------------------------------------------------------- synthetic data


def load_sentences() -> list[tuple[str, str]]:
    with open(SENTENCES, encoding="utf-8") as f:
        return [(row["text"], row["label"]) for row in map(json.loads, f)]


def review(rng: random.Random, sentences) -> tuple[str, str]:
    """Two to five sentences; the label of the majority (the first sentence breaks a tie)."""
    picked = rng.sample(sentences, rng.randint(2, 5))
    positive = sum(label == "positive" for _, label in picked)
    label = "positive" if positive * 2 > len(picked) or (positive * 2 == len(picked)
                                                         and picked[0][1] == "positive") else "negative"
    return " ".join(text for text, _ in picked), label


def answer(rng: random.Random, label: str, sentences) -> str:
    return rng.choice((label, f"The review is {label}.",
                       f"{label.capitalize()}. The critic writes: \"{rng.choice(sentences)[0]}\""))


def fresh_row(rng: random.Random, i: int, sentences) -> dict:
    """One chat row in one of four shapes, about a fifth with an id."""
    text, label = review(rng, sentences)
    instruction = rng.choice(INSTRUCTIONS)
    shape = rng.random()
    if shape < 0.5:
        row = {"prompt": f"{instruction}\n\n{text}", "completion": answer(rng, label, sentences)}
    elif shape < 0.7:
        row = {"instruction": instruction, "input": text, "output": answer(rng, label, sentences)}
    elif shape < 0.9:
        row = {"messages": [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)},
                            {"role": "user", "content": f"{instruction}\n\n{text}"},
                            {"role": "assistant", "content": answer(rng, label, sentences)}]}
    else:
        other, other_label = review(rng, sentences)
        row = {"messages": [{"role": "user", "content": f"{instruction}\n\n{text}"},
                            {"role": "assistant", "content": answer(rng, label, sentences)},
                            {"role": "user", "content": f"And this one? {other}"},
                            {"role": "assistant", "content": answer(rng, other_label, sentences)}]}
    if rng.random() < 0.2:
        row["id"] = f"row-{i}"
    return row


def near_copy(rng: random.Random, row: dict) -> dict:
    """The row with its first text field changed a little: case, punctuation, or one word (long rows)."""
    row = json.loads(json.dumps(row))
    field, container = _first_text(row)
    text = container[field]
    words = text.split()
    change = rng.random()
    if change < 0.4:
        text = text.upper() if rng.random() < 0.5 else text.lower()
    elif change < 0.7 or len(words) < 60:
        text = text.replace(",", "").replace(".", " .").replace("'", "")
    else:
        words[rng.randrange(len(words))] = rng.choice(("truly", "really", "quite", "simply"))
        text = " ".join(words)
    container[field] = text
    row.pop("id", None)
    return row


def _first_text(row: dict) -> tuple[str, dict]:
    if "messages" in row:
        turn = next(t for t in row["messages"] if t["role"] == "user")
        return "content", turn
    return ("prompt", row) if "prompt" in row else ("input", row)


def leak_copy(rng: random.Random, row: dict, sentences) -> dict:
    """The same question with a different, longer answer: not a duplicate, but a leak if split apart."""
    row = json.loads(json.dumps(row))
    new_answer = " ".join(text for text, _ in rng.sample(sentences, 3))
    if "messages" in row:
        row["messages"][-1]["content"] = new_answer
    elif "completion" in row:
        row["completion"] = new_answer
    else:
        row["output"] = new_answer
    row.pop("id", None)
    return row


def with_pii(rng: random.Random, row: dict, i: int) -> dict:
    field, container = _first_text(row)
    contact = rng.choice((f"Write to me at reviewer.{i}@example.com", f"Call +1 415 555 {i % 10000:04d}",
                          f"Posted from 203.0.{i % 250}.{i % 200 + 1}"))
    container[field] = f"{container[field]} {contact}."
    return row


def malformed(rng: random.Random, row: dict) -> str:
    line = json.dumps(row)
    return rng.choice((line[: len(line) // 2], '{"prompt": "", "completion": "positive"}',
                       '{"prompt": "Is this good?"}', '["not", "an", "object"]'))


def synthetic_lines(rows: int, seed: int):
    """``rows`` JSONL lines, the same for the same seed and size."""
    rng = random.Random(seed)
    sentences = load_sentences()
    recent: deque[dict] = deque(maxlen=RECENT_ROWS)
    thresholds, total = [], 0.0
    for kind, share in MIX.items():
        total += share
        thresholds.append((total, kind))
    for i in range(rows):
        draw = rng.random()
        kind = next((kind for limit, kind in thresholds if draw < limit), "fresh") if recent else "fresh"
        if kind == "exact_duplicate":
            row = dict(rng.choice(recent))
            if rng.random() < 0.5:
                row["id"] = f"copy-{i}"  # meta does not count: still an exact duplicate
            yield json.dumps(row)
        elif kind == "near_duplicate":
            yield json.dumps(near_copy(rng, rng.choice(recent)))
        elif kind == "leak":
            yield json.dumps(leak_copy(rng, rng.choice(recent), sentences))
        elif kind == "malformed":
            yield malformed(rng, rng.choice(recent))
        else:
            row = fresh_row(rng, i, sentences)
            if kind == "pii":
                row = with_pii(rng, row, i)
            recent.append(row)
            yield json.dumps(row)


def write_synthetic(path: Path, rows: int, seed: int) -> float:
    """Write the file; returns its size in MB."""
    with open(path, "w", encoding="utf-8") as f:
        for line in synthetic_lines(rows, seed):
            f.write(line + "\n")
    return path.stat().st_size / 1e6


# ---------------------------------------------------------------- measuring


def run_prepare(path: Path, out: Path, workers: int | None) -> dict:
    """`tunelab data prepare` in a child process: its wall seconds, peak RSS (of the main process, and
    of the whole process tree, workers included, sampled every 0.1 s) and output files."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "tunelab.cli", "data", "prepare", str(path), "--out", str(out)]
    if workers is not None:
        command += ["--workers", str(workers)]
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        tree_peak = 0
        process = psutil.Process(child.pid)
        while child.poll() is None:
            tree_peak = max(tree_peak, _tree_rss(process))
            time.sleep(0.1)
    wall = time.perf_counter() - start
    output = log.read_text(encoding="utf-8")
    if child.returncode:
        raise SystemExit(f"tunelab data prepare failed ({child.returncode}):\n{output}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    return {"wall_seconds": round(wall, 2), "peak_rss_mb": timings["peak_rss_mb"],
            "tree_peak_rss_mb": round(tree_peak / (1 << 20), 1), "workers": timings["workers"],
            "rows_per_second": round(summary["rows_read"] / wall), "summary": summary, "timings": timings,
            "output": output}


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants now."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # it ended between listing and reading
            pass
    return total


def machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


# ---------------------------------------------------------------- report


def markdown(results: dict) -> str:
    runs = results["runs"]
    stages = list(dict.fromkeys(name for run in runs for name in run["timings"]["stages"]))
    lines = [
        "# `tunelab data prepare` at scale",
        "",
        f"{results['date']} · Python {results['machine']['python']} · {results['machine']['cpus']} CPUs · "
        f"{results['machine']['platform']}" + (" · **--quick (smoke run, not a result)**" * results["quick"]),
        "",
        "Synthetic chat rows from the bundled movie-review sentences (four shapes, 4% exact duplicates, 3% near "
        "duplicates, 1% repeated questions with new answers, 1% PII, 0.1% malformed), seed "
        f"{results['seed']}. The command's defaults: normalization, the degenerate-row filter, PII report, "
        "near-duplicate and leak checks at 0.85, 80/10/10 split. Each size runs `tunelab data prepare` in its "
        "own process. Peak RSS (main) is that process's maximum resident memory; (all processes) is the largest "
        "sum over the main process and its workers, sampled every 0.1 s (workers live during pass one only; the "
        "main process peaks later). Worker stages (normalize, filter, pii, encode, minhash) add up the seconds "
        "of all workers; wait_for_workers is the main process waiting for them. Load average: the machine's "
        "1-minute load just before each run (other work on the machine slows a run down).",
        "",
        "| rows | file MB | workers | load average | wall s | rows/s | peak RSS MB (main) | "
        "peak RSS MB (all processes) | kept | quarantined | near dup | leaks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run["summary"]
        load = "-" if run.get("load_average") is None else f"{run['load_average']:.1f}"
        lines.append(f"| {run['rows']:,} | {run['file_mb']:,.0f} | {run['workers']} | {load} "
                     f"| {run['wall_seconds']:,.1f} | {run['rows_per_second']:,} | {run['peak_rss_mb']:,.0f} "
                     f"| {run['tree_peak_rss_mb']:,.0f} | {s['rows_kept']:,} | {s['quarantined']:,} "
                     f"| {s['near_duplicates']:,} | {s['leaks_removed']:,} |")
    lines += ["", "Rows per second of each stage (rows that entered it / its seconds):", "",
              "| stage | " + " | ".join(f"{run['rows']:,} rows" for run in runs) + " |",
              "|---|" + "---:|" * len(runs)]
    for name in stages:
        cells = []
        for run in runs:
            stage = run["timings"]["stages"].get(name)
            if stage is None:
                cells.append("-")
            else:
                speed = "-" if stage["rows_per_second"] is None else f"{stage['rows_per_second']:,}"
                cells.append(f"{speed} ({stage['seconds']:,.1f} s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        grew = large["peak_rss_mb"] - small["peak_rss_mb"]
        per_row = grew / (large["rows"] - small["rows"]) * (1 << 20)
        lines += ["", f"Peak RSS of the main process grew by {grew:,.0f} MB for {large['rows'] - small['rows']:,} "
                      f"more rows: about {per_row:,.0f} bytes per row (the rows themselves average "
                      f"{large['file_mb'] * 1e6 / large['rows']:,.0f} bytes)."]
    lines += ["", f"Goals for 1M rows: under {GOALS['max_seconds_1m'] // 60} minutes on 2 cores, under "
                  f"{GOALS['max_peak_rss_mb'] // 1024} GB peak RSS.", "",
              f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="the larger size; the smaller is a tenth")
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 rows, for development")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workers", type=int, default=None,
                        help="passed to tunelab data prepare (default: its own choice)")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for data_prepare.{md,json}")
    args = parser.parse_args()
    largest = 20_000 if args.quick else args.rows
    sizes = [max(largest // 10, 100), largest]
    name = "data_prepare_quick" if args.quick else "data_prepare"
    runs = []
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"synthetic_{rows}.jsonl"
            file_mb = write_synthetic(path, rows, args.seed)
            print(f"{rows:,} rows ({file_mb:,.0f} MB): running tunelab data prepare ...", flush=True)
            load = os.getloadavg()[0]
            run = run_prepare(path, Path(tmp) / f"prepared_{rows}", args.workers)
            run.update(rows=rows, file_mb=round(file_mb, 1), load_average=round(load, 2))
            print(run.pop("output"), flush=True)
            runs.append(json.loads(json.dumps(run).replace(tmp, "$WORK")))  # no temp-folder names in results
            path.unlink()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "quick": args.quick, "seed": args.seed, "goals": GOALS,
               "command": "python benchmarks/data_prepare.py " + " ".join(sys.argv[1:]), "runs": runs}
    text = markdown(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text, encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
