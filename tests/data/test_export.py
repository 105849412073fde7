"""tunelab data export --format openai: conversion, the published format checks, refusal and drop."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main
from tunelab.data.export import (
    check_export,
    example_tokens,
    format_check,
    format_problems,
    rejected_path,
    token_counter,
    write_export,
)
from tunelab.data.templates import DEFAULT_LABEL_PROMPT
from tunelab.errors import DataError, TunelabError


def words(text: str) -> int:
    return len(text.split())


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def chat(user: str, answer: str, system: str | None = None, **extra) -> dict:
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": turns, **extra}


def test_labeled_rows_get_the_training_prompt(tmp_path):
    source = tmp_path / "reviews.csv"
    source.write_text("text,label\ngreat film,pos\ndull plot,neg\nfine acting,pos\n", encoding="utf-8")
    check = check_export(source, system_prompt="You label reviews.")
    out, rejected = write_export(check, tmp_path / "openai.jsonl")
    assert rejected is None
    rows = read_jsonl(out)
    assert rows[1] == {"messages": [
        {"role": "system", "content": "You label reviews."},
        {"role": "user", "content": DEFAULT_LABEL_PROMPT.format(choices="neg, pos", text="dull plot")},
        {"role": "assistant", "content": "neg"},
    ]}
    assert [row["messages"][2]["content"] for row in rows] == ["pos", "neg", "pos"]


def test_chat_rows_keep_their_turns_and_drop_meta(tmp_path):
    rows = [chat("hi", "hello", system="Be brief.", id=1), {"prompt": "2+2?", "completion": "4"}]
    check = check_export(write_jsonl(tmp_path / "chat.jsonl", rows), system_prompt="Added")
    out, _ = write_export(check, tmp_path / "out.jsonl")
    assert read_jsonl(out) == [
        chat("hi", "hello", system="Be brief."),  # a system message already there is kept
        chat("2+2?", "4", system="Added"),
    ]


def test_raw_text_is_refused(tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a document"}])
    with pytest.raises(DataError, match="holds raw text rows"):
        check_export(source)


@pytest.mark.parametrize(
    "example, kinds",
    [
        (chat("q", "a"), []),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}, []),
        ("not an object", ["wrong type"]),
        ({}, ["missing messages"]),
        ({"messages": []}, ["missing messages"]),
        ({"prompt": "q"}, ["unknown key", "missing messages"]),
        ({"messages": ["q"]}, ["wrong type", "no assistant message"]),
        ({"messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]}, ["invalid role"]),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}, ["empty content"]),
        ({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]}, ["empty content"]),
        ({"messages": [{"role": "user", "content": "q"}]}, ["no assistant message"]),
        (chat("q", "a", extra=1), ["unknown key"]),
        ({"messages": [{"role": "user", "content": "q", "tool_calls": []}, {"role": "assistant", "content": "a"}]},
         ["unknown key"]),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                       {"role": "assistant", "content": "a"}]}, ["turn order"]),
    ],
)
def test_each_format_check_catches_its_problem(example, kinds):
    assert [kind for kind, _ in format_problems(example)] == kinds


def test_token_limit_and_cost(tmp_path):
    rows = [chat("one two", "three"), chat("word " * 49, "long"), chat("a b c", "d")]
    check = check_export(write_jsonl(tmp_path / "chat.jsonl", rows), model_limit=30, epochs=2,
                         count=words, counted_with="as words")
    # 3 formatting tokens per message and 3 for the reply, plus one per role and per word
    assert [e.tokens for e in check.examples] == [14, 61, 15]
    assert example_tokens(rows[0]["messages"], words) == 14
    assert [e.line for e in check.over_limit] == [2] and [e.line for e in check.invalid] == [2]
    report = format_check(check)
    assert "valid 2, failing 1" in report
    assert "problems: over token limit 1" in report
    assert "over the 30-token limit: line 2 (61 tokens)" in report
    assert "tokens per example: min 14, mean 30.0, max 61" in report
    assert "training tokens (the 2 valid examples): 29 per epoch, 58 for 2 epochs" in report


def test_refusal_writes_nothing(tmp_path, capsys):
    source = write_jsonl(tmp_path / "chat.jsonl", [chat("q", "a"), chat("word " * 400, "a")])
    out = tmp_path / "openai.jsonl"
    assert main(["data", "export", "--format", "openai", source, "--out", str(out), "--model-limit", "50"]) == 2
    printed = capsys.readouterr()
    assert "over the 50-token limit: line 2" in printed.out
    assert "for 3 epochs" in printed.out  # the hosted default
    error = printed.err.strip()
    assert error.count("\n") == 0 and "1 of 2 examples fail the format checks; nothing written" in error
    assert "--drop-invalid" in error
    assert not out.exists() and not rejected_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl"]


def test_drop_invalid_writes_valid_rows_and_rejected_with_reasons(tmp_path, capsys):
    rows = [chat("q1", "a1"),
            {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}]},
            '{"messages": [}',
            chat("q4", "a4"),
            chat("word " * 400, "a")]
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "openai.jsonl"
    assert main(["data", "export", source, "--out", str(out), "--model-limit", "50", "--drop-invalid"]) == 0
    assert read_jsonl(out) == [chat("q1", "a1"), chat("q4", "a4")]
    rejected = read_jsonl(tmp_path / "openai.rejected.jsonl")
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejected] == [
        (2, "invalid role"), (3, "invalid JSON"), (5, "over token limit")]
    assert rejected[1]["raw"] == '{"messages": [}'
    printed = capsys.readouterr().out
    assert "valid 2, failing 3" in printed
    assert "problems: invalid JSON 1, invalid role 1, over token limit 1" in printed
    assert f"Wrote 2 examples to {out}; 3 failing examples with reasons to {rejected_path(out)}" in printed


def test_option_checks(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", [chat("q", "a")])
    with pytest.raises(TunelabError, match="model limit"):
        check_export(source, model_limit=0)
    with pytest.raises(TunelabError, match="epochs"):
        check_export(source, epochs=0)


def test_token_counter_says_how_it_counts():
    count, counted_with = token_counter()
    assert count("hello world") > 0
    assert counted_with == "counted with tiktoken cl100k_base" or counted_with.startswith(
        "estimated at 4 characters per token")
