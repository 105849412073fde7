"""Near-duplicate removal and train -> val/test leak checks, alone and inside prepare_data."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.dedup_oracle import NearDuplicateIndex, cross_split_leaks
from tunelab.cli import main
from tunelab.data.dedup import shingles
from tunelab.data.prepare import format_summary, prepare_data
from tunelab.errors import TunelabError

OUTPUT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl", "summary.json")
VOCABULARY = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze")
              for b in ("bar", "cen", "dor", "fil", "gum", "hax", "jol", "kip", "lum", "mox")]


def passage(seed: int, words: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def words_changed(text: str, *positions: int) -> str:
    words = text.split()
    for position in positions:
        words[position] = "CHANGED"
    return " ".join(words)


def test_shingles_normalize_case_and_punctuation():
    assert shingles("Hello, World!") == shingles("hello world") == {b"hello world"}
    assert shingles("a b c d e f") == {b"a b c d e", b"b c d e f"}
    assert shingles("?!") == set()


def test_near_duplicate_found_and_unrelated_rows_kept():
    index = NearDuplicateIndex(threshold=0.85)
    originals = [passage(i) for i in range(30)]
    assert [index.add(f"row{i}", text) for i, text in enumerate(originals)] == [None] * 30
    twin = words_changed(originals[7], 100)  # 191 of 201 shingles shared: Jaccard 0.95
    assert index.add("twin", twin) == "row7"
    assert 0.85 <= index.similarity("row7", twin) < 1
    assert index.add("copy", originals[3].upper() + "!") == "row3"
    assert len(index) == 30  # duplicates are not kept
    assert index.add("new", passage(99)) is None


def test_threshold_decides():
    text = passage(1)
    cousin = words_changed(text, 20, 60, 100, 140, 180)  # Jaccard 171/221 = 0.77
    for threshold, found in ((0.85, None), (0.6, "a")):
        index = NearDuplicateIndex(threshold=threshold)
        index.add("a", text)
        assert index.add("b", cousin) == found
    with pytest.raises(TunelabError, match="above 0 and at most 1"):
        NearDuplicateIndex(threshold=0)


def test_results_are_reproducible():
    texts = [passage(i % 12) if i % 3 else words_changed(passage(i % 12), i % 90) for i in range(36)]

    def run():
        index = NearDuplicateIndex()
        return [(index.add(i, text), index.match(text)) for i, text in enumerate(texts)]

    assert run() == run()


def test_cross_split_leaks():
    train = [passage(i) for i in range(20)]
    other = [passage(100), words_changed(train[12], 100), passage(101), train[4]]
    assert cross_split_leaks(train, other, threshold=0.85) == [(1, 12), (3, 4)]
    assert cross_split_leaks(train, other, threshold=1.0) == [(3, 4)]


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def near_duplicate_file(tmp_path) -> str:
    """40 distinct rows; lines 41-43 near-duplicate line 1, line 44 near-duplicates line 2."""
    rows = [{"text": passage(i)} for i in range(40)]
    rows += [{"text": words_changed(rows[0]["text"], position)} for position in (10, 100, 190)]
    rows.append({"text": rows[1]["text"] + " and one more"})
    return write_rows(tmp_path / "docs.jsonl", rows)


def test_prepare_quarantines_later_near_duplicates(tmp_path, near_duplicate_file):
    out = tmp_path / "out"
    summary = prepare_data([near_duplicate_file], out, seed=3)
    assert summary["near_duplicates"] == 4 and summary["quarantined"] == 4
    assert summary["quarantine_reasons"] == {"near duplicate": 4}
    reasons = [(q["line"], q["reason"]) for q in read_jsonl(out / "quarantine.jsonl")]
    assert [line for line, _ in reasons] == [41, 42, 43, 44]
    for line, reason in reasons:
        first = 2 if line == 44 else 1
        assert reason.startswith(f"near duplicate of {near_duplicate_file} line {first} (similarity ~0.")
    largest = summary["duplicate_clusters"][0]
    assert largest["kept"] == {"source": near_duplicate_file, "line": 1, "text": passage(0)[:120]}
    assert [r["line"] for r in largest["removed"]] == [41, 42, 43] and largest["removed_total"] == 3
    assert all(0.85 <= r["similarity"] < 1 and len(r["text"]) == 120 for r in largest["removed"])
    assert [c["kept"]["line"] for c in summary["duplicate_clusters"]] == [1, 2]
    assert "Near duplicates removed: 4" in format_summary(summary)

    off = prepare_data([near_duplicate_file], tmp_path / "off", near_dup_threshold=None)
    assert (off["near_duplicates"], off["rows_kept"], off["duplicate_clusters"]) == (0, 44, [])
    assert "Near-duplicate and leak checks off." in format_summary(off)


def test_prepare_removes_val_test_rows_that_leak_train_rows(tmp_path):
    """Pairs that share a question but not the answer survive de-duplication; whichever half of a
    pair lands in val/test while the other is in train is a leak and leaves val/test."""
    rows = []
    for i in range(12):
        question = passage(1000 + i, words=30)
        rows.append({"prompt": question, "completion": passage(2000 + i), "id": f"pair{i}a"})
        rows.append({"prompt": question + " Explain.", "completion": passage(3000 + i), "id": f"pair{i}b"})
    rows += [{"prompt": passage(4000 + i, 30), "completion": passage(5000 + i), "id": f"solo{i}"}
             for i in range(16)]
    source = write_rows(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "out"
    summary = prepare_data([source], out, val_fraction=0.2, test_fraction=0.2, seed=0)

    assert summary["near_duplicates"] == 0 and summary["leaks_removed"] > 0
    assert summary["quarantine_reasons"] == {"leak into val/test": summary["leaks_removed"]}
    assert summary["rows_read"] == summary["rows_kept"] + summary["quarantined"] == 40
    splits = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "val", "test")}
    assert [len(rows) for rows in splits.values()] == list(summary["splits"].values())
    train_ids = {row["meta"]["id"] for row in splits["train"]}
    held_out_pairs = {row["meta"]["id"][:-1] for name in ("val", "test") for row in splits[name]}
    assert not any(pair + suffix in train_ids for pair in held_out_pairs for suffix in "ab")
    for leak in read_jsonl(out / "quarantine.jsonl"):
        leaked_id = json.loads(leak["raw"])["meta"]["id"]
        train_line = int(leak["reason"].rsplit(" ", 1)[1])
        assert leak["reason"] == f"leak: near duplicate of train row {source} line {train_line}"
        assert rows[train_line - 1]["id"][:-1] == leaked_id[:-1]  # the other half of the pair
        assert rows[train_line - 1]["id"] in train_ids
    assert f"(leaks): {summary['leaks_removed']}" in format_summary(summary)


def test_rerun_is_byte_identical_across_processes(tmp_path, near_duplicate_file):
    """Outputs depend on the data and settings only, not on the process (string hashing varies)."""
    script = ("import sys; from tunelab.data.prepare import prepare_data; "
              "prepare_data([sys.argv[1]], sys.argv[2], pii='redact', seed=5)")
    outputs = []
    for run, hash_seed in enumerate(("1", "2")):
        out = tmp_path / f"out{run}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", script, near_duplicate_file, str(out)], check=True, env=env)
        outputs.append({name: (out / name).read_bytes() for name in OUTPUT_FILES if name != "summary.json"})
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        outputs[-1]["summary"] = {k: v for k, v in summary.items() if k != "quarantine_file"}
    assert outputs[0] == outputs[1]
    assert outputs[0]["summary"]["near_duplicates"] == 4


def test_cli_flags(tmp_path, near_duplicate_file, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", near_duplicate_file, "--out", str(out), "--pii", "off",
                 "--near-dup-threshold", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["pii_mode"], summary["settings"]["near_dup_threshold"]) == ("off", None)
    assert "PII check off." in capsys.readouterr().out
    assert main(["data", "prepare", near_duplicate_file, "--out", str(out), "--near-dup-threshold", "0.9",
                 "--pii", "redact"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["pii_mode"], summary["settings"]["near_dup_threshold"]) == ("redact", 0.9)
    direct = prepare_data([near_duplicate_file], tmp_path / "direct", pii="redact", near_dup_threshold=0.9)
    assert summary["content_hash"] == direct["content_hash"]
