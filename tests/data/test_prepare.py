"""prepare_data: every row kept or quarantined with a reason, deterministic byte-identical output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.formats import read_records
from tunelab.data.prepare import format_summary, normalize_text, prepare_data, reason_category
from tunelab.errors import DataError

OUTPUT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl", "summary.json", "report.md",
                "token_lengths_train.png", "token_lengths_val.png", "token_lengths_test.png")


def pc(i: int, **extra) -> str:
    return json.dumps({"prompt": f"question {i}", "completion": f"answer {i}", **extra})


@pytest.fixture
def inputs(tmp_path) -> list[str]:
    """A JSONL file with good, bad and duplicate rows, and a CSV with one more duplicate."""
    first = tmp_path / "a.jsonl"
    lines = [pc(i) for i in range(30)]
    lines[4] = '{"prompt": "x" "completion": "y"}'  # line 5
    lines[9] = '{"prompt": "only"}'  # line 10
    lines[14] = pc(0, id="dup")  # line 15: same content as line 1, other id
    # line 20: the same as line 4 once normalized
    lines[19] = json.dumps({"prompt": "question   3 ", "completion": "answer 3"})
    lines[24] = json.dumps({"prompt": "\x00\x01", "completion": "c"})  # line 25: empty once normalized
    first.write_text("\n".join(lines) + "\n", encoding="utf-8")
    third = tmp_path / "c.csv"
    third.write_text("prompt,completion\n" + "".join(f"csv q{i},csv a{i}\n" for i in range(10))
                     + "question 1,answer 1\n", encoding="utf-8")  # line 12: duplicate of a.jsonl line 2
    return [str(first), str(third)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_keeps_or_quarantines_every_row(tmp_path, inputs):
    out = tmp_path / "out"
    summary = prepare_data(inputs, out, seed=1)
    assert summary["rows_read"] == 41
    assert summary["rows_read"] == summary["rows_kept"] + summary["quarantined"]
    assert summary["quarantined"] == 6
    assert summary["quarantine_reasons"] == {
        "exact duplicate": 3,
        "empty after normalization": 1,
        "invalid JSON": 1,
        "missing field": 1,
    }
    assert summary["splits"] == {"train": 27, "val": 4, "test": 4}
    assert summary["kind"] == "chat" and "labels" not in summary

    quarantine = read_jsonl(out / "quarantine.jsonl")
    a, c = inputs
    assert [(q["source"], q["line"], q["reason"]) for q in quarantine] == [
        (a, 5, "invalid JSON: Expecting ',' delimiter at column 16"),
        (a, 10, 'missing "completion" (expected prompt/completion, instruction/output, messages, '
                "conversations, text or text/label)"),
        (a, 15, f"exact duplicate of {a} line 1"),
        (a, 20, f"exact duplicate of {a} line 4"),
        (a, 25, '"messages"[0].content is empty after normalization'),
        (c, 12, f"exact duplicate of {a} line 2"),
    ]
    assert quarantine[0]["raw"] == '{"prompt": "x" "completion": "y"}'

    kept = sum(len(read_jsonl(out / f"{name}.jsonl")) for name in ("train", "val", "test"))
    assert kept == summary["rows_kept"]
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary
    # no temp files left; timings.json (seconds per stage) is the one file that differs on a rerun
    assert sorted(p.name for p in out.iterdir()) == sorted((*OUTPUT_FILES, "timings.json"))


def test_rerun_is_byte_identical(tmp_path, inputs):
    out = tmp_path / "out"
    prepare_data(inputs, out)
    first = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    prepare_data(inputs, out)
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == first
    other = tmp_path / "elsewhere"
    prepare_data(inputs, other)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl"):
        assert (other / name).read_bytes() == first[name]


def test_prepared_splits_read_back_unchanged(tmp_path):
    source = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q {i} é"},
                          {"role": "assistant", "content": f"a {i}"}], "id": i}
            for i in range(20)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    summary = prepare_data([str(source)], out)
    records, _ = read_records(out / "train.jsonl")
    assert len(records) == summary["splits"]["train"]
    assert all(r.meta.keys() == {"id"} and r.messages[0]["content"].endswith(" é") for r in records)
    assert "é" in (out / "train.jsonl").read_text(encoding="utf-8")  # UTF-8, not \u escapes


def test_labeled_summary_counts_labels_per_split(tmp_path):
    source = tmp_path / "reviews.csv"
    rows = [f"review {i},{'pos' if i % 3 else 'neg'}" for i in range(60)]
    source.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    summary = prepare_data([str(source)], tmp_path / "out", val_fraction=0.1, test_fraction=0.2)
    assert summary["kind"] == "labeled"
    assert summary["labels"] == {"train": {"neg": 14, "pos": 28}, "val": {"neg": 2, "pos": 4},
                                 "test": {"neg": 4, "pos": 8}}
    text = format_summary(summary)
    assert "train 42, val 6, test 12" in text and "train labels: neg 14, pos 28" in text


def test_mixed_kinds_stop_prepare(tmp_path):
    source = tmp_path / "mixed.jsonl"
    source.write_text(pc(1) + "\n" + pc(2) + "\n" + json.dumps({"text": "plain"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed record kinds \(2 chat, 1 text\)") as raised:
        prepare_data([str(source)], tmp_path / "out")
    assert raised.value.line == 3
    assert not (tmp_path / "out").exists()


def test_on_error_raise_stops_at_the_first_bad_row(tmp_path, inputs):
    with pytest.raises(DataError) as raised:
        prepare_data(inputs, tmp_path / "out", on_error="raise")
    assert (raised.value.path, raised.value.line) == (inputs[0], 5)


def test_unknown_column_file_with_no_valid_rows(tmp_path):
    source = tmp_path / "b.csv"
    source.write_text("prompt,completion,notes\nq,a,n\n", encoding="utf-8")
    with pytest.raises(DataError, match='no valid rows: 1 rejected; first: line 2: unknown column'):
        prepare_data([str(source)], tmp_path / "out")
    summary = prepare_data([str(source)], tmp_path / "out", val_fraction=0, test_fraction=0,
                           extra_columns="keep")
    assert summary["splits"] == {"train": 1, "val": 0, "test": 0}
    assert (tmp_path / "out" / "val.jsonl").read_bytes() == b""


def test_normalize_off_keeps_text_as_read(tmp_path):
    source = tmp_path / "t.jsonl"
    source.write_text(json.dumps({"text": "ｆｕｌｌ  width "}) + "\n", encoding="utf-8")
    raw = prepare_data([str(source)], tmp_path / "raw", val_fraction=0, test_fraction=0,
                       normalize=False)
    assert read_jsonl(tmp_path / "raw" / "train.jsonl") == [{"text": "ｆｕｌｌ  width "}]
    clean = prepare_data([str(source)], tmp_path / "clean", val_fraction=0, test_fraction=0)
    assert read_jsonl(tmp_path / "clean" / "train.jsonl") == [{"text": "full width"}]
    assert raw["content_hash"]["train"] != clean["content_hash"]["train"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  cafe\u0301  ", "café"),  # NFKC composes; ends stripped
        ("ﬁne ｔｅｘｔ", "fine text"),
        ("a\x00b\x1bc\x7f", "abc"),
        ("one   two\t\tthree", "one two three"),
        ("line\r\nnext\rlast", "line\nnext\nlast"),
        ("def f():\n    return  1\n\tpass", "def f():\n    return 1\n\tpass"),
        ("a\tb", "a\tb"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "reason, category",
    [
        ("invalid JSON: Expecting value at column 1", "invalid JSON"),
        ('"messages" is not valid JSON: Expecting value at column 1', "invalid JSON"),
        ('missing "completion" (expected ...)', "missing field"),
        ('"messages"[1] is missing "content"', "missing field"),
        ('unknown column(s) "foo" (expected ...)', "unknown column"),
        ("exact duplicate of a.jsonl line 3", "exact duplicate"),
        ('"text" is empty', "empty field"),
        ('"text" is empty after normalization', "empty after normalization"),
        ('"messages"[2].role is "tool"; expected system, user or assistant (tool turns are not supported)',
         "invalid role"),
        ('"conversations"[0].from is "bot"; expected system, human, user, gpt or model', "invalid role"),
        ('"messages"[1] repeats role "user"; turns must alternate user and assistant', "turn order"),
        ('"messages" has no assistant turn', "turn order"),
        ('"prompt" must be a string, got number', "wrong type"),
        ("row is not a JSON object (got list)", "wrong type"),
        ("has 3 fields but the header has 2", "wrong field count"),
        ('"messages"[1] has unsupported key(s) "name"; expected role and content', "unsupported key"),
        ("something new: details", "something new"),
    ],
)
def test_reason_category(reason, category):
    assert reason_category(reason) == category


def test_format_summary_points_at_the_quarantine_file(tmp_path, inputs):
    summary = prepare_data(inputs, tmp_path / "out")
    text = format_summary(summary)
    assert text.splitlines()[0] == "Prepared 35 chat rows from 2 input file(s): train 27, val 4, test 4"
    assert f"Quarantined 6 of 41 rows (see {tmp_path / 'out' / 'quarantine.jsonl'}):" in text
    assert "exact duplicate            3" in text
