"""Readers: every shape from every file type, exact file:line reasons, encodings and edge files."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.data.formats import (
    MAX_RAW_CHARS,
    MISSING_HINT,
    UNKNOWN_HINT,
    common_kind,
    detect_shape,
    iter_records,
    read_records,
)
from tunelab.data.records import Record, Rejected
from tunelab.errors import DataError, TunelabError

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2+2?"}
ASSISTANT = {"role": "assistant", "content": "4"}

# shape -> (one input row, the canonical row it must become, its kind)
SHAPE_CASES = {
    "prompt_completion": (
        {"prompt": "What is 2+2?", "completion": "4", "system": "Be brief."},
        {"messages": [SYSTEM, USER, ASSISTANT]},
        "chat",
    ),
    "alpaca": (
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"messages": [{"role": "user", "content": "Translate to French\n\ncat"},
                      {"role": "assistant", "content": "chat"}]},
        "chat",
    ),
    "messages": ({"messages": [SYSTEM, USER, ASSISTANT]}, {"messages": [SYSTEM, USER, ASSISTANT]}, "chat"),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
        {"messages": [USER, ASSISTANT]},
        "chat",
    ),
    "text": ({"text": "Once upon a time."}, {"text": "Once upon a time."}, "text"),
    "text_label": (
        {"text": "A fine film.", "label": "positive"},
        {"text": "A fine film.", "label": "positive"},
        "labeled",
    ),
}
FILE_TYPES = ("jsonl", "ndjson", "json", "json_object", "csv", "tsv", "parquet")


def write_rows(folder: Path, file_type: str, rows: list[dict]) -> tuple[Path, list[int]]:
    """Write rows in one file type; return the path and the line each row starts on."""
    if file_type in ("jsonl", "ndjson"):
        path = folder / f"data.{file_type}"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path, [i + 1 for i in range(len(rows))]
    if file_type in ("json", "json_object"):
        path = folder / "data.json"
        body = ",\n".join(json.dumps(r) for r in rows)
        text = f"[\n{body}\n]\n" if file_type == "json" else f'{{"version": 1,\n "data": [\n{body}\n]}}\n'
        path.write_text(text, encoding="utf-8")
        first = 2 if file_type == "json" else 3
        return path, [first + i for i in range(len(rows))]
    if file_type in ("csv", "tsv"):
        path = folder / f"data.{file_type}"
        columns = list(dict.fromkeys(key for row in rows for key in row))
        records = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
        texts = [_csv_record(cells, "\t" if file_type == "tsv" else ",") for cells in records]
        path.write_text("".join(texts), encoding="utf-8", newline="")
        # A quoted value with line breaks spans several physical lines.
        starts = [1]
        for text in texts:
            starts.append(starts[-1] + len(re.findall(r"\r\n|\r|\n", text)))
        return path, starts[1:-1]
    path = folder / "data.parquet"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
    return path, [i + 1 for i in range(len(rows))]


def _csv_record(cells: list[str], delimiter: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerow(cells)
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def write_lines(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("file_type", FILE_TYPES)
@pytest.mark.parametrize("shape", list(SHAPE_CASES))
def test_every_shape_reads_from_every_file_type(tmp_path, shape, file_type):
    row, expected, kind = SHAPE_CASES[shape]
    path, lines = write_rows(tmp_path, file_type, [row, {**row, "id": "r2"}])
    records, rejected = read_records(path)
    assert rejected == []
    assert [r.kind for r in records] == [kind, kind]
    assert [r.to_json() for r in records] == [expected, {**expected, "meta": {"id": "r2"}}]
    assert [r.line for r in records] == lines
    assert {r.source for r in records} == {str(path)}
    # An explicit shape gives the same result as detection.
    assert read_records(path, shape=shape)[0] == records


def test_txt_is_one_text_record_per_paragraph(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First para\ncontinues here.\n\n  \n\nSecond para.\n\n\nThird\n", encoding="utf-8")
    records, _ = read_records(path)
    assert [(r.kind, r.text, r.line) for r in records] == [
        ("text", "First para\ncontinues here.", 1),
        ("text", "Second para.", 6),
        ("text", "Third", 9),
    ]


def test_txt_refuses_other_shapes(tmp_path):
    path = write_lines(tmp_path, ["hello"], "notes.txt")
    with pytest.raises(DataError, match='shape must be "auto" or "text"'):
        read_records(path, shape="alpaca")


def test_labels_of_any_scalar_type_become_strings(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"text": f"t{i}", "label": v})
                                  for i, v in enumerate([1, True, False, "neg"])])
    records, _ = read_records(path)
    assert [r.label for r in records] == ["1", "true", "false", "neg"]


def test_parquet_with_native_nested_turns_and_nulls(tmp_path):
    path = tmp_path / "chat.parquet"
    rows = [
        {"messages": [USER, ASSISTANT], "id": None},
        {"messages": [SYSTEM, USER, ASSISTANT], "id": "b"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    records, _ = read_records(path)
    assert [r.messages for r in records] == [[USER, ASSISTANT], [SYSTEM, USER, ASSISTANT]]
    assert [r.meta for r in records] == [{}, {"id": "b"}]


@pytest.mark.parametrize(
    "row, shape",
    [
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"prompt": "a"}, "prompt_completion"),
        ({"instruction": "a", "output": "b"}, "alpaca"),
        ({"input": "a", "output": "b"}, "alpaca"),
        ({"messages": []}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"text": "a"}, "text"),
        ({"text": "a", "label": "b"}, "text_label"),
        ({"label": "b"}, "text_label"),
        ({"id": 1, "meta": {}}, None),
        ({"question": "a"}, None),
    ],
)
def test_detect_shape(row, shape):
    assert detect_shape(row) == shape


def chat(*turns) -> str:
    return json.dumps({"messages": list(turns)})


def sharegpt(*turns) -> str:
    return json.dumps({"conversations": [{"from": name, "value": value} for name, value in turns]})


U, A = {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}

# (bad JSONL line, the exact reason it must get)
BAD_ROWS = [
    ('{"prompt": "ab" "completion": "x"}', "invalid JSON: Expecting ',' delimiter at column 17"),
    ('{"prompt": "a"}', f'missing "completion" {MISSING_HINT}'),
    ('{"instruction": "a", "input": "b"}', f'missing "output" {MISSING_HINT}'),
    ('{"label": "pos"}', f'missing "text" {MISSING_HINT}'),
    ("{}", f"missing data fields {MISSING_HINT}"),
    ('{"id": 7}', f"missing data fields {MISSING_HINT}"),
    ('{"prompt": "a", "answer": "b"}', f'unknown column(s) "answer" {UNKNOWN_HINT}'),
    ('{"text": "a", "foo": 1, "bar": 2}', f'unknown column(s) "foo", "bar" {UNKNOWN_HINT}'),
    ('{"prompt": "a", "completion": "   "}', '"completion" is empty'),
    ('{"prompt": "a", "completion": null}', '"completion" is empty'),
    ('{"prompt": 3, "completion": "b"}', '"prompt" must be a string, got number'),
    ('{"instruction": "a", "output": "b", "system": ["s"]}', '"system" must be a string, got list'),
    ('{"text": "a", "label": 0.5}', '"label" must be a string, integer or boolean, got number'),
    ('{"text": "a", "label": null}', '"label" is empty'),
    ('{"text": "\\ud800 broken"}', '"text" contains an unpaired surrogate (a broken \\u escape)'),
    ("[1, 2]", "row is not a JSON object (got list)"),
    ('{"messages": []}', '"messages" is empty'),
    ('{"messages": 5}', '"messages" must be a list of {role, content} objects, got number'),
    ('{"messages": "[{"}', '"messages" is not valid JSON: Expecting property name enclosed in double '
                           "quotes at column 3"),
    (chat(U, "hi"), '"messages"[1] must be an object, got string'),
    (chat(U, {"role": "assistant"}), '"messages"[1] is missing "content"'),
    (chat(U, {"role": "assistant", "content": ""}), '"messages"[1].content is empty'),
    (chat(U, {"role": "assistant", "content": 4}), '"messages"[1].content must be a string, got number'),
    (chat(U, A, {"role": "tool", "content": "42"}),
     '"messages"[2].role is "tool"; expected system, user or assistant (tool turns are not supported)'),
    (chat(U, {"role": "bot", "content": "a"}),
     '"messages"[1].role is "bot"; expected system, user or assistant'),
    (chat(U, {"role": ["assistant"], "content": "a"}),
     '"messages"[1].role is ["assistant"]; expected system, user or assistant'),
    (chat(U, {**A, "tool_calls": [{"id": 1}]}),
     '"messages"[1] has unsupported key(s) "tool_calls"; expected role and content'),
    (chat(A, U), '"messages"[0] is an assistant turn before any user turn'),
    (chat(SYSTEM, A), '"messages"[1] is an assistant turn before any user turn'),
    (chat(U, U, A), '"messages"[1] repeats role "user"; turns must alternate user and assistant'),
    (chat(U, A, SYSTEM, U, A), '"messages"[2] is a system turn; only the first turn may be system'),
    (chat(SYSTEM, U), '"messages" has no assistant turn'),
    (sharegpt(("human", "q"), ("function_call", "f()")),
     '"conversations"[1].from is "function_call"; expected system, human, user, gpt, assistant or model '
     "(tool turns are not supported)"),
    (sharegpt(("human", "q"), ("gpt", " ")), '"conversations"[1].value is empty'),
    ('{"text": "a", "meta": 5}', '"meta" must be an object, got number'),
]


@pytest.mark.parametrize("bad_line, reason", BAD_ROWS)
def test_bad_row_is_named_by_file_line_and_field(tmp_path, bad_line, reason):
    good = json.dumps({"prompt": "p", "completion": "c"})
    path = write_lines(tmp_path, [good, "", bad_line, good])
    with pytest.raises(DataError) as raised:
        read_records(path)
    assert str(raised.value) == f"{path} line 3: {reason}"
    assert (raised.value.line, raised.value.reason) == (3, reason)

    records, rejected = read_records(path, on_error="quarantine")
    assert [r.line for r in records] == [1, 4]
    assert rejected == [Rejected(str(path), 3, reason, bad_line)]


def test_csv_embedded_newlines_count_physical_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,completion\n"multi\nline\nprompt",ok\n\n"a","b"\n"x\ny",\nlast,row,extra\n',
                    encoding="utf-8")
    records, rejected = read_records(path, on_error="quarantine")
    assert [(r.messages[0]["content"], r.line) for r in records] == [("multi\nline\nprompt", 2), ("a", 6)]
    assert [(r.line, r.reason) for r in rejected] == [
        (7, '"completion" is empty'),
        (9, "has 3 fields but the header has 2"),
    ]
    assert rejected[1].raw == "last,row,extra"


def test_csv_json_cells_for_nested_fields(tmp_path):
    path = tmp_path / "chat.tsv"
    row = {"conversations": json.dumps([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]),
           "meta": json.dumps({"split": "x"})}
    path.write_text("conversations\tmeta\n" + _tsv(row.values()), encoding="utf-8")
    [record], _ = read_records(path)
    assert record.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert record.meta == {"split": "x"}


def _tsv(cells) -> str:
    return "\t".join('"' + c.replace('"', '""') + '"' for c in cells) + "\n"


def test_json_array_element_lines_and_errors(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "a"},\n\n  {"txt": "b"},\n  {"text": "c"}\n]', encoding="utf-8")
    records, rejected = read_records(path, on_error="quarantine")
    assert [r.line for r in records] == [2, 5]
    assert (rejected[0].line, rejected[0].raw) == (4, '{"txt": "b"}')

    path.write_text('[\n  {"text": "a"},\n  {"text": "b" "c"}\n]', encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_records(path)
    assert raised.value.line == 3
    assert raised.value.reason.startswith("invalid JSON: Expecting ',' delimiter at column")


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"text": "a"}\n{"text": "b"}\n', "needs the .jsonl extension"),
        ('{"a": [], "b": []}', 'found list fields "a", "b"'),
        ('{"a": 1}', "found no list field"),
        ('"just a string"', "expected a JSON array of objects"),
        ("[]", "has no rows"),
        ("[{]", "invalid JSON"),
    ],
)
def test_json_layout_errors(tmp_path, text, message):
    path = tmp_path / "data.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        read_records(path)


def test_extra_columns_keep_goes_to_meta(tmp_path):
    row = {"text": "a", "foo": 1, "id": "x", "meta": {"a": 1}, "metadata": {"b": 2}, "source": "web"}
    path = write_lines(tmp_path, [json.dumps(row)])
    with pytest.raises(DataError, match='unknown column'):
        read_records(path)
    [record], _ = read_records(path, extra_columns="keep")
    assert record.meta == {"a": 1, "b": 2, "id": "x", "source": "web", "foo": 1}


def test_explicit_shape_makes_other_fields_unknown(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"text": "a", "label": "b"})])
    with pytest.raises(DataError, match='unknown column\\(s\\) "label"'):
        read_records(path, shape="text")
    [record], _ = read_records(path, shape="text", extra_columns="keep")
    assert (record.kind, record.meta) == ("text", {"label": "b"})


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", None, "file not found"),
    ("empty.jsonl", b"", "is empty"),
    ("blank.jsonl", b"\n  \n\n", "has no rows"),
    ("header_only.csv", b"prompt,completion\n", "has no rows"),
    ("data.xlsx", b"PK..", 'unsupported file type ".xlsx"; supported: .jsonl, .ndjson, .json, .csv, .tsv, '
                          ".parquet, .txt"),
    ("broken.parquet", b"not parquet at all", "not a readable Parquet file"),
    ("nul.jsonl", "{}\n".encode("utf-16-le"), 'pass encoding="utf-16-le"'),
    ("repeat.csv", b"text,text\na,b\n", 'header repeats column\\(s\\) "text"'),
])
def test_file_level_problems(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as raised:
        read_records(path)
    assert str(raised.value).startswith(str(path))


def test_directory_instead_of_file(tmp_path):
    folder = tmp_path / "train.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_records(folder)


def test_no_valid_rows_names_the_first_problem(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "a"}', "oops"])
    with pytest.raises(DataError) as raised:
        read_records(path, on_error="quarantine")
    assert raised.value.reason == (
        f'no valid rows: 2 rejected; first: line 1: missing "completion" {MISSING_HINT}'
    )


def test_on_error_skip_is_refused(tmp_path):
    path = write_lines(tmp_path, ['{"text": "a"}'])
    with pytest.raises(TunelabError, match="on_error"):
        read_records(path, on_error="skip")


@pytest.mark.parametrize("bom, codec", [
    (codecs.BOM_UTF8, "utf-8"),
    (b"", "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
])
@pytest.mark.parametrize("name", ["data.jsonl", "data.csv", "data.txt"])
def test_encodings_are_detected(tmp_path, bom, codec, name):
    text = {"data.jsonl": '{"text": "café ☕"}\n{"text": "naïve"}\n',
            "data.csv": "text\ncafé ☕\nnaïve\n",
            "data.txt": "café ☕\n\nnaïve\n"}[name]
    path = tmp_path / name
    path.write_bytes(bom + text.encode(codec))
    records, _ = read_records(path)
    assert [r.text for r in records] == ["café ☕", "naïve"]


def test_latin1_gives_byte_offset_and_explicit_encoding_reads_it(tmp_path):
    path = tmp_path / "data.jsonl"
    content = '{"text": "plain"}\n{"text": "café"}\n'.encode("latin-1")
    path.write_bytes(content)
    with pytest.raises(DataError) as raised:
        read_records(path)
    offset = content.index("é".encode("latin-1"))
    assert str(raised.value) == (
        f"{path} line 2: not valid UTF-8 at byte {offset}; "
        're-save the file as UTF-8 or pass encoding="latin-1"'
    )
    records, _ = read_records(path, encoding="latin-1")
    assert records[1].text == "café"
    with pytest.raises(DataError, match='unknown encoding "klingon"'):
        read_records(path, encoding="klingon")


@pytest.mark.parametrize("name", ["long.jsonl", "long.json", "long.csv", "long.txt"])
def test_five_megabyte_single_line(tmp_path, name):
    text = "word " * 1_000_000 + "end"
    path = tmp_path / name
    content = {"long.jsonl": json.dumps({"text": text}) + "\n",
               "long.json": json.dumps([{"text": text}]),
               "long.csv": "text\n" + text + "\n",
               "long.txt": text + "\n"}[name]
    path.write_text(content, encoding="utf-8")
    [record], _ = read_records(path)
    assert record.text == text


def test_long_bad_line_keeps_truncated_raw(tmp_path):
    bad = '{"text": "' + "x" * 5_000_000  # never closed
    path = write_lines(tmp_path, ['{"text": "ok"}', bad])
    records, [rejected] = read_records(path, on_error="quarantine")
    assert rejected.reason.startswith("invalid JSON: Unterminated string")
    assert rejected.raw == bad[:MAX_RAW_CHARS]


def test_mixed_kinds_are_read_but_common_kind_refuses_them(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps({"prompt": "a", "completion": "b"}),
        json.dumps({"messages": [U, A]}),
        json.dumps({"text": "plain"}),
    ])
    records, _ = read_records(path)
    assert common_kind(records[:2]) == "chat"
    with pytest.raises(DataError) as raised:
        common_kind(records)
    assert raised.value.line == 3
    assert "mixed record kinds (2 chat, 1 text)" in raised.value.reason


def test_invalid_utf8_position_past_the_first_chunk(tmp_path):
    # A two-byte character straddles the 1 MiB read boundary; the bad byte comes later.
    first = ('{"text": "' + "a" * (2**20 - 11) + 'é"}\n').encode()
    assert first[2**20 - 1 : 2**20 + 1] == "é".encode()
    path = tmp_path / "big.jsonl"
    content = first + b'{"text": "ok"}\n{"text": "\xff"}\n'
    path.write_bytes(content)
    with pytest.raises(DataError) as raised:
        list(iter_records(path))
    assert raised.value.line == 3
    offset = content.index(b"\xff")
    assert f"not valid UTF-8 at byte {offset};" in raised.value.reason


def test_iter_records_checks_the_file_at_once_and_then_streams(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        iter_records(tmp_path / "missing.jsonl")
    path = write_lines(tmp_path, [json.dumps({"text": str(i)}) for i in range(3)])
    stream = iter_records(path)
    first = next(stream)
    assert isinstance(first, Record) and first.text == "0"


# Property tests: whatever the lines, each non-blank line becomes exactly one Record or Rejected.

_value = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30).filter(
    lambda s: not s.isspace()
)
_turn_pairs = st.lists(st.tuples(_value, _value), min_size=1, max_size=3)
# One strategy per shape; tabular files hold one shape (and one label type) per file.
SHAPE_ROWS = [
    st.fixed_dictionaries({"prompt": _value, "completion": _value}),
    st.fixed_dictionaries({"instruction": _value, "output": _value}, optional={"input": _value}),
    _turn_pairs.map(lambda pairs: {"messages": [t for q, a in pairs for t in (
        {"role": "user", "content": q}, {"role": "assistant", "content": a})]}),
    _turn_pairs.map(lambda pairs: {"conversations": [t for q, a in pairs for t in (
        {"from": "human", "value": q}, {"from": "gpt", "value": a})]}),
    st.fixed_dictionaries({"text": _value}),
    st.fixed_dictionaries({"text": _value, "label": _value}),
]
VALID_ROWS = st.one_of(
    *SHAPE_ROWS,
    st.fixed_dictionaries({"text": _value, "label": st.one_of(st.integers(), st.booleans())}),
)


def _not_a_valid_row(line: str) -> bool:
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:
        return True


_noise = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00\n\r\ufeff"), min_size=1, max_size=60
).filter(lambda s: not s.isspace() and _not_a_valid_row(s))
LINES = st.lists(
    st.one_of(
        VALID_ROWS.map(lambda row: ("valid", json.dumps(row))),
        VALID_ROWS.map(lambda row: ("bad", json.dumps(row)[:-1])),  # truncated object
        VALID_ROWS.map(lambda row: ("bad", json.dumps({**row, "extra": 1}))),
        _noise.map(lambda line: ("bad", line)),
        st.sampled_from(["", "   ", "\t"]).map(lambda line: ("blank", line)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=LINES, ensure_ascii=st.booleans())
def test_property_every_line_is_a_record_or_a_rejection(lines, ensure_ascii):
    if not ensure_ascii:
        lines = [(k, json.dumps(json.loads(line), ensure_ascii=False) if k == "valid" else line)
                 for k, line in lines]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text("\n".join(line for _, line in lines) + "\n", encoding="utf-8")
        try:
            items = list(iter_records(path))
        except DataError as error:
            assert all(kind == "blank" for kind, _ in lines), error
            return
    valid_lines = [i + 1 for i, (kind, _) in enumerate(lines) if kind == "valid"]
    bad_lines = [i + 1 for i, (kind, _) in enumerate(lines) if kind == "bad"]
    assert [r.line for r in items if isinstance(r, Record)] == valid_lines
    assert [r.line for r in items if isinstance(r, Rejected)] == bad_lines


@settings(max_examples=150, deadline=None, database=None)
@given(content=st.binary(max_size=300), suffix=st.sampled_from(["jsonl", "json", "csv", "txt"]),
       bom=st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE]))
def test_property_random_bytes_raise_only_data_error(content, suffix, bom):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data.{suffix}"
        path.write_bytes(bom + content)
        try:
            items = list(iter_records(path))
        except DataError:
            return
    assert all(isinstance(item, (Record, Rejected)) for item in items)


@settings(max_examples=60, deadline=None, database=None)
@given(rows=st.sampled_from(SHAPE_ROWS).flatmap(lambda shape: st.lists(shape, min_size=1, max_size=8)),
       file_type=st.sampled_from(FILE_TYPES))
def test_property_valid_rows_survive_every_file_type(rows, file_type):
    with tempfile.TemporaryDirectory() as folder:
        path, lines = write_rows(Path(folder), file_type, rows)
        records, rejected = read_records(path, on_error="quarantine")
    assert rejected == []
    assert [r.line for r in records] == lines
