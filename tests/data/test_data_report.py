"""report.md written by prepare_data: every section, valid figures, the same bytes on a rerun."""

from __future__ import annotations

import csv
import json
import random

import pytest
from PIL import Image

from tunelab.data.prepare import format_summary, prepare_data
from tunelab.data.report import write_data_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOCABULARY = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe") for b in ("bar", "cen", "dor", "fil", "gum")]
SECTIONS = ("# Data report", "## Rows per stage", "## Token lengths", "## Near duplicates", "## PII",
            "## Longest and shortest examples")
LONG_TEXT = "start | pipes | " + "word " * 300


def passage(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


@pytest.fixture
def labeled_csv(tmp_path) -> str:
    """40 labeled rows of 5 to 44 words, one exact duplicate, one near duplicate, one email, one long row."""
    rows = [(passage(i, 5 + i), "pos" if i % 4 else "neg") for i in range(40)]
    near = passage(1000, 100)
    rows += [(near, "pos"), (near.rsplit(" ", 1)[0] + " changed", "pos"), rows[3],
             ("write to ada@example.com please", "neg"), (LONG_TEXT, "neg")]
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return str(path)


@pytest.fixture
def chat_jsonl(tmp_path) -> str:
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": passage(i, 3 + i % 17), "completion": f"answer {i}"} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def figures(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


def test_labeled_report_has_every_section(tmp_path, labeled_csv):
    out = tmp_path / "out"
    summary = prepare_data([labeled_csv], out, seed=3)
    text = (out / "report.md").read_text(encoding="utf-8")
    for heading in (*SECTIONS, "## Label balance"):
        assert f"\n{heading}\n" in f"\n{text}"
    assert "| read | 45 |" in text
    assert "| quarantined: exact duplicate | 1 |" in text and "| quarantined: near duplicate | 1 |" in text
    assert f"| kept | {summary['rows_kept']} |" in text
    assert "words and punctuation marks" in text  # says how lengths were counted
    train_labels = summary["labels"]["train"]
    share = train_labels["neg"] / sum(train_labels.values())
    assert f"| neg | {train_labels['neg']} ({share:.0%}) |" in text
    assert "![label balance](label_balance.png)" in text
    assert "**Cluster 1**: 1 removed" in text and "| removed |" in text and "| 0.9" in text
    assert "PII found and left in place" in text and "| email | 1 |" in text

    longest = next(line for line in text.splitlines() if line.startswith("| longest |"))
    assert "start \\| pipes \\| word" in longest  # pipes escaped, the row stays one table row
    shown = longest.split(" | ")[4]
    assert len(shown.replace("\\|", "|")) == 200 and shown.endswith("…")
    assert sum(line.startswith("| longest |") for line in text.splitlines()) == 3
    assert sum(line.startswith("| shortest |") for line in text.splitlines()) == 3
    assert f"Data report: {out / 'report.md'}" in format_summary(summary)


def test_figures_are_valid_pngs_and_byte_identical_on_rerun(tmp_path, labeled_csv):
    out = tmp_path / "out"
    prepare_data([labeled_csv], out)
    first = figures(out)
    assert set(first) == {"token_lengths_train.png", "token_lengths_val.png", "token_lengths_test.png",
                          "label_balance.png"}
    for name, data in first.items():
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(out / name) as image:
            image.verify()
    report = (out / "report.md").read_bytes()
    for name in first:
        assert f"]({name})".encode() in report

    prepare_data([labeled_csv], out)
    assert figures(out) == first
    assert (out / "report.md").read_bytes() == report
    prepare_data([labeled_csv], tmp_path / "elsewhere")
    assert figures(tmp_path / "elsewhere") == first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_chat_report_has_no_label_section_and_drops_stale_figures(tmp_path, labeled_csv, chat_jsonl):
    out = tmp_path / "out"
    prepare_data([labeled_csv], out, test_fraction=0.1)
    assert (out / "label_balance.png").exists()
    summary = prepare_data([chat_jsonl], out, test_fraction=0, pii="off", near_dup_threshold=None)
    text = (out / "report.md").read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f"\n{heading}\n" in f"\n{text}"
    assert "## Label balance" not in text
    assert set(figures(out)) == {"token_lengths_train.png", "token_lengths_val.png"}  # test split empty
    assert "| test | 0 | - | - | - | - |" in text
    assert "| quarantined, all reasons | 0 |" in text
    assert "PII check off." in text and "Near-duplicate and leak checks were off." in text
    assert "| longest | " in text and "user: " in text and "assistant: answer" in text
    assert summary["kind"] == "chat"


class PairTokenizer:
    """Stands in for a real tokenizer: one token per character pair."""

    name_or_path = "pairs"

    def encode(self, text: str) -> list[int]:
        return list(range((len(text) + 1) // 2))


def test_tokenizer_counts_replace_the_word_estimate(tmp_path, chat_jsonl):
    out = tmp_path / "out"
    summary = prepare_data([chat_jsonl], out)
    path = write_data_report(out, summary, tokenizer=PairTokenizer())
    text = path.read_text(encoding="utf-8")
    assert "tokens of the pairs tokenizer" in text and "words and punctuation marks" not in text
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    tokens = [(len("\n".join(t["content"] for t in row["messages"])) + 1) // 2 for row in rows]
    assert f"| train | {len(rows)} | {min(tokens)} |" in text and f"| {max(tokens)} |" in text
