"""prepare_data streams: the same results as the pipeline on in-memory lists, any number of workers,
timings per stage, quality filters as a stage, and memory that does not grow with the rows."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pytest

from tests.data.dedup_oracle import NearDuplicateIndex
from tunelab.cli import main
from tunelab.data import scan
from tunelab.data.clean import content_text, input_text, normalized
from tunelab.data.filters import FilterSettings
from tunelab.data.formats import MAX_RAW_CHARS, read_records
from tunelab.data.pii import PII_TYPES, redact_record
from tunelab.data.prepare import prepare_data, read_timings
from tunelab.data.records import Record, Rejected
from tunelab.data.split import row_hash, split_records

SPLITS = ("train", "val", "test")
VOCABULARY = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to")
              for b in ("bar", "cen", "dor", "fil", "gum", "hax", "jol", "kip")]


def passage(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def changed(text: str, rng: random.Random) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = "CHANGED"
    return " ".join(words)


@pytest.fixture
def mixed_inputs(tmp_path) -> list[str]:
    """A chat JSONL file with every kind of row prepare_data handles, and a JSON array on one line
    (all its rows are line 1, so quarantine order within a line is tested too)."""
    rng = random.Random(11)
    lines, earlier = [], []
    for i in range(260):
        draw = rng.random()
        if earlier and draw < 0.08:
            lines.append(json.dumps({**rng.choice(earlier), "id": f"copy{i}"}))  # exact duplicate, other id
        elif earlier and draw < 0.16:
            row = dict(rng.choice(earlier))
            row["prompt"] = changed(row["prompt"], rng) if rng.random() < 0.5 else row["prompt"].upper()
            lines.append(json.dumps(row))  # near duplicate
        elif earlier and draw < 0.22:
            lines.append(json.dumps({"prompt": rng.choice(earlier)["prompt"], "completion": passage(rng, 40)}))
        else:
            row = {"prompt": passage(rng, rng.randint(3, 60)), "completion": passage(rng, rng.randint(1, 30))}
            if draw < 0.3:
                row["prompt"] += f" mail me at user{i}@example.com"
            earlier.append(row)
            lines.append(json.dumps(row))
    for position, bad in zip((5, 50, 120, 200), ('{"prompt": "broken', '{"prompt": "only"}', "[1, 2]",
                                                  '{"prompt": " \\u0000 ", "completion": "x"}')):
        lines.insert(position, bad)
    first = tmp_path / "mixed.jsonl"
    first.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = [earlier[0], {"prompt": "", "completion": "x"}, {"prompt": passage(rng, 20), "completion": "y"},
             earlier[1], {"prompt": "\x01\x02", "completion": "z"},
             {"prompt": passage(rng, 20), "completion": "w"}]
    second = tmp_path / "one_line.json"
    second.write_text(json.dumps(items), encoding="utf-8")
    return [str(first), str(second)]


def quarantined(record: Record, reason: str) -> Rejected:
    raw = json.dumps(record.to_json(), ensure_ascii=False)[:MAX_RAW_CHARS]
    return Rejected(record.source, record.line, reason, raw)


def reference_prepare(inputs: list[str], seed: int, pii: str, threshold: float):
    """The pipeline on lists of Records, stage after stage, as prepare_data ran before it streamed."""
    records, quarantine = [], []
    for path in inputs:
        kept, rejected = read_records(path, on_error="quarantine")
        records += kept
        quarantine += rejected
    cleaned = []
    for record in records:
        clean = normalized(record)
        if isinstance(clean, str):
            quarantine.append(quarantined(record, clean))
            continue
        result, found = redact_record(clean, pii)
        if result is None:
            types = ", ".join(t for t in PII_TYPES if found[t])
            quarantine.append(quarantined(redact_record(clean, "redact")[0], f"contains PII: {types}"))
            continue
        cleaned.append(result)
    first_copy, unique = {}, []
    for record in cleaned:
        key = json.dumps({k: v for k, v in record.to_json().items() if k != "meta"}, sort_keys=True)
        original = first_copy.setdefault(key, record)
        if original is record:
            unique.append(record)
        else:
            quarantine.append(quarantined(record, f"exact duplicate of {original.source} line {original.line}"))
    index, kept = NearDuplicateIndex(threshold), []
    for position, record in enumerate(unique):
        original = index.add(position, content_text(record))
        if original is None:
            kept.append(record)
            continue
        similarity = index.similarity(original, content_text(record))
        first = unique[original]
        quarantine.append(quarantined(record, f"near duplicate of {first.source} line {first.line} "
                                              f"(similarity ~{similarity:.2f})"))
    train, val, test = split_records(kept, 0.1, 0.1, seed)
    index = NearDuplicateIndex(threshold)
    for position, record in enumerate(train):
        index.insert(position, input_text(record))
    held_out = {"val": [], "test": []}
    for name, split in (("val", val), ("test", test)):
        for record in split:
            match = index.match(input_text(record))
            if match is None:
                held_out[name].append(record)
            else:
                source = train[match[0]]
                quarantine.append(quarantined(record, f"leak: near duplicate of train row {source.source} "
                                                      f"line {source.line}"))
    order = {path: i for i, path in enumerate(inputs)}
    quarantine.sort(key=lambda r: (order[r.source], r.line))
    splits = {"train": train, **held_out}
    return {name: [r.to_json() for r in rows] for name, rows in splits.items()}, [q.to_json() for q in quarantine]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("pii, threshold, seed", [("report", 0.85, 1), ("drop", 0.6, 7), ("redact", 1.0, 3)])
def test_streaming_matches_the_pipeline_on_lists(tmp_path, mixed_inputs, pii, threshold, seed):
    out = tmp_path / "out"
    summary = prepare_data(mixed_inputs, out, seed=seed, pii=pii, near_dup_threshold=threshold)
    splits, quarantine = reference_prepare(mixed_inputs, seed, pii, threshold)
    assert {name: read_jsonl(out / f"{name}.jsonl") for name in SPLITS} == splits
    assert read_jsonl(out / "quarantine.jsonl") == quarantine
    assert {"exact duplicate", "near duplicate", "leak into val/test", "invalid JSON", "missing field",
            "wrong type", "empty after normalization"} <= set(summary["quarantine_reasons"])
    assert summary["rows_read"] == summary["rows_kept"] + summary["quarantined"] == 270


def test_any_number_of_workers_writes_the_same_files(tmp_path, mixed_inputs, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_ROWS", 16)  # many chunks in flight at once
    outputs = []
    for workers in (1, 3):
        out = tmp_path / f"workers{workers}"
        prepare_data(mixed_inputs, out, pii="redact", workers=workers)
        assert read_timings(out)["workers"] == workers
        outputs.append({p.name: p.read_bytes().replace(str(out).encode(), b"OUT")
                        for p in sorted(out.iterdir()) if p.name != "timings.json"})
    assert outputs[0] == outputs[1]


def test_timings_cover_every_stage(tmp_path, mixed_inputs, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", *mixed_inputs, "--out", str(out), "--workers", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    timings = read_timings(out)
    stages = timings["stages"]
    assert {"read", "normalize", "filter", "pii", "encode", "minhash", "exact_dedup", "near_dedup", "split",
            "leaks", "write", "report"} <= set(stages)
    assert stages["read"]["rows"] == summary["rows_read"]
    assert stages["near_dedup"]["rows"] < stages["exact_dedup"]["rows"] < stages["read"]["rows"]
    for stage in stages.values():
        assert stage["seconds"] >= 0 and (stage["rows_per_second"] is None or stage["rows_per_second"] > 0)
    assert timings["peak_rss_mb"] > 0 and timings["total_seconds"] > 0
    printed = capsys.readouterr().out
    assert "Timings (" in printed and "rows/s" in printed
    assert next(line for line in printed.splitlines() if line.strip().startswith("minhash")).split()[1] == \
        f"{stages['minhash']['rows']:,}"


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


FILTER_ROWS = [
    {"text": "<p>A <b>fine</b> review of a film that was well worth seeing.</p>", "label": "positive"},
    {"text": "Short.", "label": "negative"},
    {"text": "Great! " + "!" * 40, "label": "positive"},
    {"text": "A plain sentence about a dull film that went on and on.", "label": "negative"},
    {"text": "Another plain sentence, this time about a film with a fine cast.", "label": "positive"},
]


def test_quality_filters_run_after_normalization(tmp_path):
    source = write_rows(tmp_path / "reviews.jsonl", FILTER_ROWS)
    out = tmp_path / "out"
    filters = FilterSettings(strip_html=True, min_tokens=5)
    summary = prepare_data([source], out, val_fraction=0, test_fraction=0, filters=filters)
    assert summary["settings"]["filters"] == {"strip_html": True, "min_tokens": 5, "max_tokens": None,
                                              "tokenizer": None, "languages": [], "drop_degenerate": True}
    assert summary["quarantine_reasons"] == {"degenerate: repetition": 1, "too short": 1}
    assert [(q["line"], q["reason"].split(":")[0]) for q in read_jsonl(out / "quarantine.jsonl")] == [
        (2, "too short"), (3, "degenerate")]
    train = read_jsonl(out / "train.jsonl")
    assert {"text": "A fine review of a film that was well worth seeing.", "label": "positive"} in train
    assert len(train) == summary["rows_kept"] == 3
    assert read_timings(out)["stages"]["filter"]["rows"] == 5


def test_cli_filter_flags(tmp_path, capsys):
    rows = FILTER_ROWS + [{"text": "Ce film est une belle surprise, les acteurs sont excellents et l'histoire "
                                   "nous tient en haleine.", "label": "positive"}]
    source = write_rows(tmp_path / "reviews.jsonl", rows)
    out = tmp_path / "out"
    assert main(["data", "prepare", source, "--out", str(out), "--val-fraction", "0", "--test-fraction", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["quarantine_reasons"] == {"degenerate: repetition": 1}  # the CLI drops degenerate rows
    assert main(["data", "prepare", source, "--out", str(out), "--val-fraction", "0", "--test-fraction", "0",
                 "--keep-degenerate", "--strip-html", "--min-tokens", "5", "--max-tokens", "40",
                 "--languages", "en, de"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["filters"] == {"strip_html": True, "min_tokens": 5, "max_tokens": 40,
                                              "tokenizer": None, "languages": ["en", "de"],
                                              "drop_degenerate": False}
    # the degenerate row is kept as such, and found too long
    assert summary["quarantine_reasons"] == {"other language": 1, "too long": 1, "too short": 1}
    assert "other language  1" in capsys.readouterr().out


def long_rows_file(path: Path, rows: int) -> str:
    rng = random.Random(5)
    return write_rows(path, [{"text": passage(rng, 60), "label": rng.choice("ab"), "id": i} for i in range(rows)])


def test_memory_does_not_grow_with_the_rows(tmp_path):
    """Traced Python memory at its peak grows by far less per row than a row takes (over 400 bytes
    here as text alone): no stage keeps the rows themselves in memory."""
    peaks = {}
    for rows in (1500, 6000):
        source = long_rows_file(tmp_path / f"rows{rows}.jsonl", rows)
        tracemalloc.start()
        prepare_data([source], tmp_path / f"out{rows}", pii="off", workers=1)
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert (peaks[6000] - peaks[1500]) / 4500 < 150


def test_augmented_rows_follow_their_source_through_the_compact_split(tmp_path):
    """The split sees rows as light views; augmentation links in meta must still reach it."""
    rows = []
    for i in range(40):
        source = Record("labeled", text=f"review {i}: {passage(random.Random(i), 12)}", label="ab"[i % 2])
        rows.append(source.to_json())
        rows.append({"text": f"paraphrase {i}: {passage(random.Random(100 + i), 12)}", "label": source.label,
                     "meta": {"augmented_from": row_hash(source)}})
    out = tmp_path / "out"
    summary = prepare_data([write_rows(tmp_path / "augmented.jsonl", rows)], out)
    held_out = [row for name in ("val", "test") for row in read_jsonl(out / f"{name}.jsonl")]
    assert held_out and not any("meta" in row for row in held_out)  # only original rows are held out
    copies = read_jsonl(out / "quarantine.jsonl")
    assert len(copies) == len(held_out) == summary["quarantine_reasons"]["augmented copy of a val/test row"]
    held_out_hashes = {row_hash(Record("labeled", text=row["text"], label=row["label"])) for row in held_out}
    assert {json.loads(copy["raw"])["meta"]["augmented_from"] for copy in copies} == held_out_hashes
