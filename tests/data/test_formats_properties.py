"""Readers under random and corrupted input, in every file type.

Whatever the bytes, a reader either raises DataError (a problem with the file as a whole) or
accounts for every row: a Record, or a Rejected with its reason and source line. Corrupted rows
never cost a valid row, and valid rows come back unchanged and in order.
"""

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

from tunelab.data.formats import MAX_RAW_CHARS, iter_records, read_records
from tunelab.data.records import Record, Rejected
from tunelab.errors import DataError, TunelabError

BOUNDED = settings(max_examples=50, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEXT_FORMATS = ("jsonl", "json", "csv", "tsv", "txt")
TABLE_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")

# A field value the readers must keep exactly: any non-blank text (NULs, quotes, delimiters, line
# breaks and BOMs included), no unpaired surrogates.
_value = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24).filter(str.strip)


def _turns(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


# Each strategy gives (a row as a user writes it, the canonical row the reader must produce).
CHAT_ROWS = [
    st.builds(lambda p, c: ({"prompt": p, "completion": c}, {"messages": _turns(p, c)}), _value, _value),
    st.builds(lambda i, x, o: ({"instruction": i, "input": x, "output": o}, {"messages": _turns(f"{i}\n\n{x}", o)}),
              _value, _value, _value),
    st.builds(lambda i, o: ({"instruction": i, "output": o}, {"messages": _turns(i, o)}), _value, _value),
    st.builds(lambda q, a: ({"messages": _turns(q, a)}, {"messages": _turns(q, a)}), _value, _value),
    st.builds(lambda q, a: ({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
                            {"messages": _turns(q, a)}), _value, _value),
]
TEXT_ROW = st.builds(lambda t: ({"text": t}, {"text": t}), _value)
LABELED_ROW = st.builds(lambda t, label: ({"text": t, "label": label}, {"text": t, "label": label}), _value, _value)
# Tables mix chat shapes with either plain text or labeled text, not both: in a table a row with
# an empty label cell is a labeled row missing its label, not a text row.
MIXED_ROWS = st.sampled_from([TEXT_ROW, LABELED_ROW]).flatmap(
    lambda text_shape: st.lists(st.one_of(*CHAT_ROWS, text_shape), min_size=1, max_size=8))

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(st.characters(codec="utf-8"), max_size=10))
JSON_VALUES = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


# Writing files.


def write_table(folder: Path, file_type: str, rows: list[dict]) -> tuple[Path, list[int]]:
    """Rows in one file (tables get the union of all columns, empty where a row has no value);
    returns the path and the line each row starts on."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if file_type == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path, list(range(1, len(rows) + 1))
    if file_type == "json":
        path = folder / "data.json"
        path.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n", encoding="utf-8")
        return path, list(range(2, len(rows) + 2))
    if file_type == "parquet":
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
        return path, list(range(1, len(rows) + 1))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    return write_csv(folder, file_type, [columns, *cells])


def write_csv(folder: Path, file_type: str, records: list[list[str]]) -> tuple[Path, list[int]]:
    """CSV/TSV records written by the csv module; returns the path and each data record's first
    physical line (quoted line breaks make a record span several)."""
    path = folder / f"data.{file_type}"
    texts = [_csv_record(cells, "\t" if file_type == "tsv" else ",") for cells in records]
    path.write_text("".join(texts), encoding="utf-8", newline="")
    starts = [1]
    for text in texts:
        starts.append(starts[-1] + len(re.findall(r"\r\n|\r|\n", text)))
    return path, starts[1:-1]


def _csv_record(cells: list[str], delimiter: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerow(cells)
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def read_all(path: Path) -> list[Record | Rejected] | DataError:
    """Every item the reader yields, or the DataError it raised; anything else fails the test."""
    try:
        return list(iter_records(path))
    except DataError as error:
        return error


# Valid rows in every format, shapes mixed in one file.


@BOUNDED
@given(pairs=MIXED_ROWS, file_type=st.sampled_from(TABLE_FORMATS))
def test_mixed_shapes_in_one_file_come_back_exactly_and_in_order(pairs, file_type):
    rows, expected = zip(*pairs, strict=True)
    with tempfile.TemporaryDirectory() as folder:
        path, lines = write_table(Path(folder), file_type, list(rows))
        records, rejected = read_records(path, on_error="quarantine")
    assert rejected == []
    assert [r.to_json() for r in records] == list(expected)
    assert [r.line for r in records] == lines


# Corrupted lines in JSON Lines.


def _not_a_row(value) -> bool:
    """True when a JSON value can never be a valid row (so the test knows it must be rejected)."""
    return not isinstance(value, dict)


_noise = st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=40).filter(
    lambda s: s.strip() and not _parses_to_object(s))


def _parses_to_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text.removeprefix("\ufeff")), dict)
    except (ValueError, RecursionError):
        return False


def _truncated(pair) -> st.SearchStrategy[str]:
    line = json.dumps(pair[0])
    return st.integers(1, len(line) - 1).map(lambda end: line[:end])


CORRUPT_LINES = st.one_of(
    st.one_of(*CHAT_ROWS, TEXT_ROW, LABELED_ROW).flatmap(_truncated),  # cut off mid-row
    _noise,  # random characters, stray carriage returns included
    JSON_VALUES.filter(_not_a_row).map(json.dumps),  # JSON, but not an object
    st.one_of(*CHAT_ROWS).map(lambda pair: json.dumps({**pair[0], "score": 1})),  # an unknown column
    st.one_of(*CHAT_ROWS).map(lambda pair: json.dumps({k: 7 for k in pair[0]})),  # numbers, not text
)
JSONL_LINES = st.lists(
    st.one_of(
        st.one_of(*CHAT_ROWS, TEXT_ROW, LABELED_ROW).map(lambda pair: ("valid", pair)),
        CORRUPT_LINES.map(lambda line: ("bad", line)),
        st.sampled_from(["", " ", "\t", "\r", " \r"]).map(lambda line: ("blank", line)),
    ),
    min_size=1, max_size=20,
)


@BOUNDED
@given(lines=JSONL_LINES)
def test_corrupted_lines_are_quarantined_and_never_cost_a_valid_row(lines):
    texts = [json.dumps(item[0], ensure_ascii=False) if kind == "valid" else item for kind, item in lines]
    valid = [(i + 1, item[1]) for i, (kind, item) in enumerate(lines) if kind == "valid"]
    bad = [i + 1 for i, (kind, _) in enumerate(lines) if kind == "bad"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        items = read_all(path)
        if not valid:  # nothing to keep: a file-level error, never an empty result
            with pytest.raises(DataError):
                read_records(path, on_error="quarantine")
            return
        records, rejected = read_records(path, on_error="quarantine")
        if bad:
            with pytest.raises(DataError) as raised:
                read_records(path)
            assert raised.value.line == bad[0]
    assert [(r.line, r.to_json()) for r in records] == valid
    assert [r.line for r in rejected] == bad
    for item in rejected:
        assert item.reason and item.source == str(path)
        assert item.raw == texts[item.line - 1].rstrip("\r")[:MAX_RAW_CHARS]
    assert items == sorted([*records, *rejected], key=lambda item: item.line)


# Random JSON values as rows.


@BOUNDED
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=12), file_type=st.sampled_from(["jsonl", "json"]))
def test_random_json_values_each_become_one_record_or_rejection(values, file_type):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data.{file_type}"
        body = [json.dumps(value) for value in values]
        if file_type == "jsonl":
            path.write_text("\n".join(body) + "\n", encoding="utf-8")
        else:
            path.write_text("[\n" + ",\n".join(body) + "\n]", encoding="utf-8")
        items = read_all(path)
    first = 1 if file_type == "jsonl" else 2
    assert [item.line for item in items] == list(range(first, first + len(values)))
    for item, value in zip(items, values, strict=True):
        if isinstance(item, Rejected):
            assert item.reason
        else:
            assert isinstance(value, dict) and item.kind in ("chat", "text", "labeled")


@BOUNDED
@given(header=st.lists(_value, min_size=1, max_size=4, unique_by=str.strip),
       cells=st.lists(st.lists(st.one_of(_value, st.just("")), min_size=0, max_size=5), min_size=1, max_size=8),
       file_type=st.sampled_from(["csv", "tsv"]))
def test_random_csv_cells_each_become_one_record_or_rejection(header, cells, file_type):
    header = [name.strip() for name in header]
    with tempfile.TemporaryDirectory() as folder:
        path, lines = write_csv(Path(folder), file_type, [header, *cells])
        items = read_all(path)
    if isinstance(items, DataError):  # only when no data row has any cell: a file of blank lines
        assert "has no rows" in items.reason and all(row == [] for row in cells), items
        return
    expected = [line for line, row in zip(lines, cells, strict=True) if row != []]
    assert [item.line for item in items] == expected
    for item, row in zip(items, [row for row in cells if row != []], strict=True):
        if len(row) != len(header):
            assert isinstance(item, Rejected) and item.reason.startswith(f"has {len(row)} fields")


# Random bytes.


@BOUNDED
@given(pairs=st.lists(st.one_of(*CHAT_ROWS), min_size=2, max_size=6), data=st.data())
def test_random_bytes_in_a_jsonl_line_affect_only_that_line_or_name_it(pairs, data):
    lines = [json.dumps(row, ensure_ascii=False).encode() for row, _ in pairs]
    target = data.draw(st.integers(1, len(lines) - 1), label="line index")  # not the first: no BOM games
    noise = data.draw(st.binary(min_size=1, max_size=8).filter(lambda b: b"\n" not in b), label="noise")
    at = data.draw(st.integers(0, len(lines[target])), label="offset")
    lines[target] = lines[target][:at] + noise + lines[target][at:]
    content = b"\n".join(lines) + b"\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_bytes(content)
        items = read_all(path)
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as error:
        assert isinstance(items, DataError)
        assert items.line == target + 1
        assert items.reason.startswith(f"not valid UTF-8 at byte {error.start};")
        return
    assert [item.line for item in items] == list(range(1, len(lines) + 1))
    others = [(item.line, item.to_json()) for item in items if item.line != target + 1]
    assert others == [(i + 1, expected) for i, (_, expected) in enumerate(pairs) if i != target]


@BOUNDED
@given(pairs=st.lists(st.one_of(*CHAT_ROWS, TEXT_ROW), min_size=1, max_size=5), data=st.data(),
       file_type=st.sampled_from(TEXT_FORMATS))
def test_random_bytes_in_any_text_file_raise_only_data_error(pairs, data, file_type):
    with tempfile.TemporaryDirectory() as folder:
        if file_type == "txt":
            path = Path(folder) / "data.txt"
            path.write_text("\n\n".join(row["text"] if "text" in row else str(row) for row, _ in pairs) + "\n",
                            encoding="utf-8")
        else:
            path, _ = write_table(Path(folder), file_type, [row for row, _ in pairs])
        content = path.read_bytes()
        at = data.draw(st.integers(1, len(content)), label="offset")
        noise = data.draw(st.binary(min_size=1, max_size=16), label="noise")
        path.write_bytes(content[:at] + noise + content[at:])
        items = read_all(path)
    assert isinstance(items, DataError) or all(isinstance(item, (Record, Rejected)) for item in items)


@settings(max_examples=30, deadline=None, database=None)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_parquet_bytes_raise_only_data_error(flips):
    with tempfile.TemporaryDirectory() as folder:
        path, _ = write_table(Path(folder), "parquet",
                              [{"prompt": f"question {i} é", "completion": f"answer {i}"} for i in range(20)])
        content = bytearray(path.read_bytes())
        for where, byte in flips:
            content[int(where * len(content))] = byte
        path.write_bytes(bytes(content))
        items = read_all(path)
    assert isinstance(items, DataError) or all(isinstance(item, (Record, Rejected)) for item in items)


@BOUNDED
@given(paragraphs=st.lists(st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\n\r\ufeff"), min_size=1, max_size=20).filter(str.strip),
    min_size=1, max_size=3), min_size=1, max_size=5))
def test_txt_paragraphs_come_back_exactly(paragraphs):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "notes.txt"
        path.write_text("\n\n".join("\n".join(lines) for lines in paragraphs) + "\n", encoding="utf-8")
        records, rejected = read_records(path)
    starts = [1]
    for lines in paragraphs:
        starts.append(starts[-1] + len(lines) + 1)
    assert rejected == []
    assert [(r.line, r.text) for r in records] == [(start, "\n".join(lines))
                                                   for start, lines in zip(starts, paragraphs)]


# Explicit bad inputs.


def test_a_number_too_long_to_convert_is_a_row_problem(tmp_path):
    huge = "1" * 5000
    path = tmp_path / "data.jsonl"
    path.write_text(f'{{"text": "ok"}}\n{{"text": {huge}}}\n{{"text": "fine"}}\n', encoding="utf-8")
    records, [rejected] = read_records(path, on_error="quarantine")
    assert [r.line for r in records] == [1, 3]
    assert (rejected.line, rejected.reason) == (2, "invalid JSON: a number has more than 4300 digits")

    cells = tmp_path / "data.csv"
    cells.write_text(f'messages\n"[{huge}]"\n"[{{""role"": ""user"", ""content"": ""q""}}, '
                     f'{{""role"": ""assistant"", ""content"": ""a""}}]"\n', encoding="utf-8")
    records, [rejected] = read_records(cells, on_error="quarantine")
    assert rejected.reason == '"messages" is not valid JSON: a number has more than 4300 digits'

    array = tmp_path / "data.json"
    array.write_text(f'[{{"text": "ok"}}, {{"text": {huge}}}]', encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON: a number has more than 4300 digits"):
        read_records(array)


def test_nesting_too_deep_is_named(tmp_path):
    deep = "[" * 100_000
    path = tmp_path / "data.jsonl"
    path.write_text(f'{{"text": "ok"}}\n{deep}\n', encoding="utf-8")
    _, [rejected] = read_records(path, on_error="quarantine")
    assert (rejected.line, rejected.reason) == (2, "invalid JSON: nested too deeply")
    array = tmp_path / "data.json"
    array.write_text(f'[{{"text": "ok"}}, {deep}]', encoding="utf-8")
    with pytest.raises(DataError, match="nested too deeply"):
        read_records(array)


def test_a_carriage_return_inside_a_jsonl_line_is_not_a_line_break(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "a",\r"label": "x"}\r\n{"text": "b\rc"}\n{"text": "d"}\n')
    records, [rejected] = read_records(path, on_error="quarantine")
    assert [(r.line, r.to_json()) for r in records] == [(1, {"text": "a", "label": "x"}), (3, {"text": "d"})]
    assert (rejected.line, rejected.reason) == (2, "invalid JSON: Invalid control character at column 12")


def test_unterminated_string_reason_reads_well(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "never closed\n', encoding="utf-8")
    _, [rejected] = read_records(path, on_error="quarantine")
    assert rejected.reason == "invalid JSON: Unterminated string starting at column 10"


def test_concatenated_files_with_byte_order_marks(tmp_path):
    first = codecs.BOM_UTF8 + b'{"text": "from the first file"}\n'
    second = codecs.BOM_UTF8 + b'{"text": "from the second file"}\n'
    path = tmp_path / "data.jsonl"
    path.write_bytes(first + second)
    records, rejected = read_records(path)
    assert [(r.line, r.text) for r in records] == [(1, "from the first file"), (2, "from the second file")]


@pytest.mark.parametrize("file_type", ["csv", "tsv", "parquet"])
def test_a_table_mixing_shapes_reads_each_row_as_the_shape_it_fills(tmp_path, file_type):
    rows = [{"prompt": "2+2?", "completion": "4"}, {"text": "plain"}, {"instruction": "Say hi", "output": "hi"}]
    path, _ = write_table(tmp_path, file_type, rows)
    records, rejected = read_records(path, on_error="quarantine")
    assert rejected == []
    assert [r.kind for r in records] == ["chat", "text", "chat"]
    assert records[2].messages == _turns("Say hi", "hi")


def test_csv_trailing_empty_column_is_ignored(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label,\nA fine film.,positive,\n", encoding="utf-8")
    [record], _ = read_records(path)
    assert record.to_json() == {"text": "A fine film.", "label": "positive"}


@pytest.mark.parametrize("file_type", ["csv", "tsv"])
def test_unclosed_quote_names_the_lines_it_swallowed(tmp_path, file_type):
    sep = "\t" if file_type == "tsv" else ","
    path = tmp_path / f"data.{file_type}"
    path.write_text(f'text{sep}label\na{sep}pos\n"unclosed{sep}neg\nb{sep}pos\nc{sep}neg\n', encoding="utf-8")
    records, [rejected] = read_records(path, on_error="quarantine")
    assert [r.line for r in records] == [2]
    assert rejected.line == 3
    assert rejected.reason == ("has 1 fields but the header has 2 (a quoted field runs from line 3 to line 5: "
                               "is a quote not closed?)")


@pytest.mark.parametrize("file_type, content", [
    ("csv", "text,label\nplain,pos\ncafé,neg\n"),
    ("tsv", "text\tlabel\nplain\tpos\ncafé\tneg\n"),
    ("txt", "plain\n\ncafé\n"),
    ("json", '[\n{"text": "plain"},\n{"text": "café"}\n]'),
])
def test_latin1_files_name_the_line_and_read_with_an_explicit_encoding(tmp_path, file_type, content):
    path = tmp_path / f"data.{file_type}"
    raw = content.encode("latin-1")
    path.write_bytes(raw)
    with pytest.raises(DataError) as raised:
        read_records(path)
    line = content[: content.index("é")].count("\n") + 1
    offset = raw.index("é".encode("latin-1"))
    assert (raised.value.line, raised.value.reason) == (
        line, f'not valid UTF-8 at byte {offset}; re-save the file as UTF-8 or pass encoding="latin-1"')
    records, _ = read_records(path, encoding="latin-1")
    assert records[-1].text == "café"


@pytest.mark.parametrize("file_type, content", [
    ("json", '[{"text": "café ☕"}, {"text": "naïve"}]'),
    ("tsv", "text\tlabel\ncafé ☕\tpos\nnaïve\tneg\n"),
])
@pytest.mark.parametrize("bom, codec", [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")])
def test_utf16_with_bom(tmp_path, file_type, content, bom, codec):
    path = tmp_path / f"data.{file_type}"
    path.write_bytes(bom + content.encode(codec))
    records, _ = read_records(path)
    assert [r.text for r in records] == ["café ☕", "naïve"]


def test_utf16_cut_mid_character_is_a_file_problem(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(codecs.BOM_UTF16_LE + '{"text": "a"}\n'.encode("utf-16-le") + b"{")
    with pytest.raises(DataError, match="not valid utf-16: truncated data"):
        read_records(path)


def test_crlf_csv_with_line_breaks_inside_cells(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b'prompt,completion\r\n"two\r\nlines",ok\r\nsingle,"a\nb"\r\n"x\ry",z\r\n')
    records, _ = read_records(path)
    assert [(r.line, r.messages[0]["content"], r.messages[1]["content"]) for r in records] == [
        (2, "two\r\nlines", "ok"), (4, "single", "a\nb"), (6, "x\ry", "z")]


FIFTY_MB = 50 * 2**20


@pytest.mark.parametrize("file_type", ["jsonl", "jsonl-truncated", "json", "csv", "txt"])
def test_fifty_megabyte_single_line(tmp_path, file_type):
    text = "x" * FIFTY_MB
    path = tmp_path / f"long.{file_type.split('-')[0]}"
    content = {"jsonl": f'{{"text": "{text}"}}\n{{"text": "after"}}\n',
               "jsonl-truncated": f'{{"text": "{text}\n{{"text": "after"}}\n',
               "json": f'[{{"text": "{text}"}}, {{"text": "after"}}]',
               "csv": f"text\n{text}\nafter\n",
               "txt": f"{text}\n\nafter\n"}[file_type]
    path.write_text(content, encoding="utf-8")
    del content
    try:
        records, rejected = read_records(path, on_error="quarantine")
    finally:
        path.unlink()
    assert records[-1].text == "after"
    if file_type == "jsonl-truncated":
        [bad] = rejected
        assert (bad.line, bad.reason) == (1, "invalid JSON: Unterminated string starting at column 10")
        assert len(bad.raw) == MAX_RAW_CHARS
    else:
        assert rejected == [] and len(records[0].text) == FIFTY_MB


@pytest.mark.parametrize("name", ["data.jsonl", "data.json", "data.csv", "data.tsv", "data.parquet", "notes.txt"])
def test_empty_file_of_every_type(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is empty$"):
        read_records(path)


@pytest.mark.parametrize("name", ["shards.parquet", "train.csv", "corpus"])
def test_directory_instead_of_a_file(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="is a directory; pass a data file"):
        read_records(folder)


def test_parquet_with_invalid_utf8_text(tmp_path):
    data = b"ok\xff\xfe"
    offsets = pa.array([0, 2, 4], pa.int32())
    strings = pa.StringArray.from_buffers(2, offsets.buffers()[1], pa.py_buffer(data))
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": strings}), path)
    with pytest.raises(DataError, match="not a readable Parquet file: a text column is not valid UTF-8"):
        read_records(path)


def test_only_tunelab_errors_escape_for_bad_settings(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n', encoding="utf-8")
    for kwargs in ({"shape": "csv"}, {"on_error": "skip"}, {"extra_columns": "drop"}, {"encoding": "klingon"}):
        with pytest.raises(TunelabError):
            read_records(path, **kwargs)
