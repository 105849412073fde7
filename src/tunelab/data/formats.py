"""Streaming readers that turn raw task files into canonical Records.

Each row becomes either a Record or a Rejected whose reason names the field at fault, so the user
can fix the file. Problems with the file as a whole raise DataError with one clear line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tunelab.data.records import Record, Rejected
from tunelab.errors import DataError, TunelabError
from tunelab.security.crypto import is_encrypted_file
from tunelab.security.files import open_readable, read_bytes

SHAPES = ("prompt_completion", "alpaca", "messages", "sharegpt", "text", "text_label")
EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt")
META_KEYS = ("id", "meta", "metadata", "source")
MAX_RAW_CHARS = 10_000

MISSING_HINT = (
    "(expected prompt/completion, instruction/output, messages, conversations, text or text/label)"
)
UNKNOWN_HINT = (
    "(expected prompt/completion, instruction/input/output, messages, conversations, text or "
    "text/label)"
)

# Fields each shape needs, fields it may also carry, and the fields that identify it when detecting.
_REQUIRED = {
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
    "text_label": ("text", "label"),
}
_OPTIONAL = {"prompt_completion": ("system",), "alpaca": ("input", "system")}
_SIGNATURE = {**_REQUIRED, "alpaca": ("instruction", "input", "output")}

# Role names each chat shape accepts, and the canonical role each one means.
_MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user",
                   "gpt": "assistant", "assistant": "assistant", "model": "assistant"}
_TOOL_ROLES = ("tool", "function", "function_call", "ipython", "observation")

_JSON_LAYOUT = 'expected a JSON array of objects, or an object with one list field like {"data": [...]}'
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_SURROGATE = re.compile("[\ud800-\udfff]")
# Python's csv module refuses fields over 128 KiB by default; long documents are legitimate.
_CSV_FIELD_LIMIT = 2**31 - 1

# One row as a reader sees it: (first line, raw text or None to show the row as JSON, the row as a
# dict or the reason it could not be parsed).
RawRow = tuple[int, str | None, dict | str]


class _RowError(Exception):
    """A problem with one row; its message becomes the Rejected reason."""


def detect_shape(row: dict) -> str | None:
    """The shape whose identifying fields best match the row's keys, or None when none match.

    Partial matches count, so a row with "prompt" but no "completion" is reported as missing
    "completion" rather than as an unknown shape. Fields with a value count first and null fields
    only break ties, so a row of a table that mixes shapes (its other columns empty) is read as
    the shape it fills in.
    """
    best, best_score = None, (0, 0)
    for shape in SHAPES:
        keys = _SIGNATURE[shape]
        score = (sum(row.get(key) is not None for key in keys), sum(key in row for key in keys))
        if score > best_score:
            best, best_score = shape, score
    return best


def iter_records(
    path, shape: str = "auto", extra_columns: str = "error", encoding: str | None = None
) -> Iterator[Record | Rejected]:
    """Stream one file as Records, with a Rejected (and its raw text) for every bad row.

    File-level problems raise DataError: missing file, directory, unsupported extension, empty
    file, undecodable text. ``encoding`` overrides the detected one (UTF-8, with or without BOM,
    or UTF-16 with BOM).
    """
    _check_choice("shape", shape, ("auto", *SHAPES))
    _check_choice("extra_columns", extra_columns, ("error", "keep"))
    source = str(path)
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".parquet":
        return _records(source, _parquet_rows(path), shape, extra_columns, None)
    text_encoding = _text_encoding(path, encoding)
    if suffix == ".txt" and shape not in ("auto", "text"):
        raise DataError(
            source, f'a .txt file holds plain text; shape must be "auto" or "text", not "{shape}"'
        )
    if suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, text_encoding, "\t" if suffix == ".tsv" else ",")
    else:
        readers = {".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows, ".json": _json_rows, ".txt": _txt_rows}
        rows = readers[suffix](path, text_encoding)
    return _records(source, rows, shape, extra_columns, text_encoding)


def read_records(
    path,
    shape: str = "auto",
    on_error: str = "raise",
    extra_columns: str = "error",
    encoding: str | None = None,
) -> tuple[list[Record], list[Rejected]]:
    """Read a whole file. ``on_error="raise"`` stops at the first bad row; ``"quarantine"`` collects
    bad rows for the quarantine file. There is no "skip": nothing is dropped silently."""
    _check_choice("on_error", on_error, ("raise", "quarantine"))
    records: list[Record] = []
    rejected: list[Rejected] = []
    for item in iter_records(path, shape, extra_columns, encoding):
        if isinstance(item, Record):
            records.append(item)
        elif on_error == "raise":
            raise DataError(item.source, item.reason, item.line)
        else:
            rejected.append(item)
    if not records:
        first = rejected[0]
        raise DataError(
            path, f"no valid rows: {len(rejected)} rejected; first: line {first.line}: {first.reason}"
        )
    return records, rejected


def common_kind(records: Iterable[Record]) -> str:
    """The one kind all records share; training on a mix of chat, text and labeled rows is an error."""
    records = list(records)
    if not records:
        raise TunelabError("no records to train on")
    counts = Counter(record.kind for record in records)
    majority = counts.most_common(1)[0][0]
    if len(counts) == 1:
        return majority
    odd = next(record for record in records if record.kind != majority)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    raise DataError(
        odd.source,
        f"mixed record kinds ({summary}): this row is {odd.kind} but most are {majority}; "
        "use one kind per dataset, or set shape to read every row one way",
        odd.line,
    )


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TunelabError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_file(path: Path) -> str:
    """The file's lower-case extension, once it is known to be a readable, non-empty data file."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory; pass a data file")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(
            path, f'unsupported file type "{suffix or path.name}"; supported: {", ".join(EXTENSIONS)}'
        )
    if path.stat().st_size == 0:
        raise DataError(path, "is empty")
    return suffix


def _text_encoding(path: Path, encoding: str | None) -> str:
    """UTF-8 (BOM or not) by default, UTF-16 when a BOM says so, or the caller's explicit choice."""
    if encoding is not None:
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise DataError(path, f'unknown encoding "{encoding}"') from None
        return "utf-8-sig" if name == "utf-8" else name
    try:
        with open_readable(path, "rb") as f:
            head = f.read(4096)
    except DataError:
        raise
    except TunelabError as error:  # encrypted: without its key, or damaged
        raise _sealed_error(str(path), error) from None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if head.count(0) > len(head) // 4:  # ASCII in UTF-16 is every other byte NUL
        raise DataError(
            path,
            'is mostly NUL bytes: not a text file, or UTF-16 without a byte-order mark '
            '(then pass encoding="utf-16-le")',
        )
    return "utf-8-sig"


def _records(
    source: str, rows: Iterator[RawRow], shape: str, extra_columns: str, encoding: str | None
) -> Iterator[Record | Rejected]:
    count = 0
    try:
        for line, raw, row in rows:
            count += 1
            try:
                if isinstance(row, str):
                    raise _RowError(row)
                yield _to_record(row, shape, extra_columns, source, line)
            except _RowError as problem:
                shown = raw if raw is not None else json.dumps(row, ensure_ascii=False, default=str)
                yield Rejected(source, line, str(problem), shown[:MAX_RAW_CHARS])
    except UnicodeDecodeError as error:
        raise _decode_error(source, encoding, error) from None
    except OSError as error:
        raise DataError(source, f"cannot read: {error.strerror or error}") from None
    except DataError:
        raise
    except TunelabError as error:  # encrypted: without its key, or damaged
        raise _sealed_error(source, error) from None
    if count == 0:
        raise DataError(source, "has no rows")


def _sealed_error(source: str, error: TunelabError) -> DataError:
    return DataError(source, str(error).removeprefix(f"{source}: "))


def _decode_error(source: str, encoding: str | None, error: UnicodeDecodeError) -> DataError:
    if encoding == "utf-8-sig":
        offset, line = _invalid_utf8_position(source)
        return DataError(
            source,
            f'not valid UTF-8 at byte {offset}; re-save the file as UTF-8 or pass encoding="latin-1"',
            line,
        )
    return DataError(source, f"not valid {encoding}: {error.reason}")


def _invalid_utf8_position(path: str) -> tuple[int, int]:
    """Byte offset (0-based) and line (1-based) of the first byte that is not UTF-8, in one pass
    over fixed-size chunks so a huge file is never held in memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open_readable(path, "rb") as f:
        while chunk := f.read(1 << 20):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                bad = offset - len(pending) + error.start
                return bad, line + chunk[: max(bad - offset, 0)].count(b"\n")
            line += chunk.count(b"\n")
            offset += len(chunk)
    return offset - len(decoder.getstate()[0]), line


# Readers: each yields RawRow tuples from one file type.


def _jsonl_rows(path: Path, encoding: str) -> Iterator[RawRow]:
    # Lines end at "\n" only (JSON Lines): a stray "\r" is JSON whitespace, not a line break.
    with open_readable(path, "r", encoding=encoding, newline="\n") as f:
        for number, line in enumerate(f, 1):
            if line.isspace():
                continue
            text = line.rstrip("\r\n")
            # A byte-order mark opening a later line comes from concatenated files; it is not data.
            yield number, text, _json_object(text.removeprefix("\ufeff"))


def _json_object(text: str) -> dict | str:
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"invalid JSON: {_json_problem(error)}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    return _object_or_reason(value)


def _json_problem(error: ValueError) -> str:
    """What a JSON decoding error means: the decoder's message, or a number too long to convert."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg.removesuffix(' at')} at column {error.colno}"
    return f"a number has more than {sys.get_int_max_str_digits()} digits"


def _object_or_reason(value) -> dict | str:
    return value if isinstance(value, dict) else f"row is not a JSON object (got {_type_name(value)})"


def _json_rows(path: Path, encoding: str) -> Iterator[RawRow]:
    with open_readable(path, "r", encoding=encoding) as f:
        text = f.read()
    start = _skip_whitespace(text, 0)
    if start == len(text):
        return
    try:
        if text.startswith("[", start):
            yield from _array_rows(path, text, start, top_level=True)
        elif text.startswith("{", start):
            yield from _array_rows(path, text, _single_list_field(path, text, start), top_level=False)
        else:
            raise DataError(path, _JSON_LAYOUT)
    except ValueError as error:
        line = error.lineno if isinstance(error, json.JSONDecodeError) else None
        raise DataError(path, f"invalid JSON: {_json_problem(error)}", line) from None
    except RecursionError:
        raise DataError(path, "invalid JSON: nested too deeply") from None


def _array_rows(path: Path, text: str, pos: int, top_level: bool) -> Iterator[RawRow]:
    """Each element of the JSON array starting at text[pos], with the line it starts on."""
    line, counted = 1, 0
    pos = _skip_whitespace(text, pos + 1)
    if not text.startswith("]", pos):
        while True:
            value, end = _DECODER.raw_decode(text, pos)
            line += text.count("\n", counted, pos)
            counted = pos
            yield line, text[pos : min(end, pos + MAX_RAW_CHARS)], _object_or_reason(value)
            pos = _skip_whitespace(text, end)
            if not text.startswith(",", pos):
                break
            pos = _skip_whitespace(text, pos + 1)
        if not text.startswith("]", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    if top_level:
        _check_nothing_after(path, text, pos + 1)


def _single_list_field(path: Path, text: str, pos: int) -> int:
    """Where the one list-valued field of the top-level object starts, as in {"data": [...]}."""
    lists: list[tuple[str, int]] = []
    pos = _skip_whitespace(text, pos + 1)
    if not text.startswith("}", pos):
        while True:
            if not text.startswith('"', pos):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_whitespace(text, pos)
            if not text.startswith(":", pos):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
            value_at = _skip_whitespace(text, pos + 1)
            value, pos = _DECODER.raw_decode(text, value_at)
            if isinstance(value, list):
                lists.append((key, value_at))
            pos = _skip_whitespace(text, pos)
            if not text.startswith(",", pos):
                break
            pos = _skip_whitespace(text, pos + 1)
        if not text.startswith("}", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    _check_nothing_after(path, text, pos + 1)
    if len(lists) != 1:
        found = f"found list fields {_quote_all(k for k, _ in lists)}" if lists else "found no list field"
        raise DataError(path, f"{_JSON_LAYOUT}; {found}")
    return lists[0][1]


def _check_nothing_after(path: Path, text: str, pos: int) -> None:
    pos = _skip_whitespace(text, pos)
    if pos < len(text):
        raise DataError(
            path,
            "invalid JSON: more data after the top-level value; a file with one JSON object per "
            "line needs the .jsonl extension",
            text.count("\n", 0, pos) + 1,
        )


def _skip_whitespace(text: str, pos: int) -> int:
    return _JSON_WHITESPACE.match(text, pos).end()


def _csv_rows(path: Path, encoding: str, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    with open_readable(path, "r", encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [name.strip() for name in next((cells for cells in reader if cells), [])]
            repeated = [name for name, n in Counter(header).items() if n > 1]
            if repeated:
                raise DataError(path, f"header repeats column(s) {_quote_all(repeated)}", reader.line_num)
            previous = reader.line_num
            for cells in reader:
                line, previous = previous + 1, reader.line_num
                if not cells:
                    continue
                raw = _csv_line(cells, delimiter)
                if len(cells) != len(header):
                    reason = f"has {len(cells)} fields but the header has {len(header)}"
                    if previous > line:  # a quoted field ran across line ends, maybe to the file's end
                        reason += (f" (a quoted field runs from line {line} to line {previous}: "
                                   "is a quote not closed?)")
                    yield line, raw, reason
                else:
                    # An empty cell means "no value", as a missing key does in JSON.
                    yield line, raw, {name: cell or None for name, cell in zip(header, cells, strict=True)}
        except csv.Error as error:
            raise DataError(path, f"CSV error: {error}", reader.line_num) from None


def _csv_line(cells: list[str], delimiter: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="").writerow(cells)
    return buffer.getvalue()


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa  # imported here: only Parquet input needs it, and it is slow to import
    import pyarrow.parquet as pq

    try:
        line = 0
        source = io.BytesIO(read_bytes(path)) if is_encrypted_file(path) else path  # Parquet seeks: decrypt whole
        for batch in pq.ParquetFile(source).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                line += 1
                yield line, None, row
    except pa.ArrowException as error:
        raise DataError(path, f"not a readable Parquet file: {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(
            path, f"not a readable Parquet file: a text column is not valid UTF-8 ({error.reason})"
        ) from None


def _txt_rows(path: Path, encoding: str) -> Iterator[RawRow]:
    """One document per block of lines separated by blank lines."""
    with open_readable(path, "r", encoding=encoding) as f:
        block: list[str] = []
        start = 0
        for number, line in enumerate(f, 1):
            if not line.isspace():
                start = start if block else number
                block.append(line)
            elif block:
                yield _text_block(start, block)
                block = []
        if block:
            yield _text_block(start, block)


def _text_block(start: int, lines: list[str]) -> RawRow:
    text = "".join(lines).rstrip("\n")
    return start, text, {"text": text}


# From a parsed row to a Record.


def _to_record(row: dict, shape: str, extra_columns: str, source: str, line: int) -> Record:
    if shape == "auto":
        shape = detect_shape(row)
    known = {*META_KEYS, *_REQUIRED.get(shape, ()), *_OPTIONAL.get(shape, ())}
    extra = [key for key, value in row.items() if key not in known and value is not None]
    if extra and extra_columns == "error":
        raise _RowError(f"unknown column(s) {_quote_all(extra)} {UNKNOWN_HINT}")
    if shape is None:
        raise _RowError(f"missing data fields {MISSING_HINT}")
    fields = _BUILDERS[shape](row)
    meta = _meta(row, extra if extra_columns == "keep" else [])
    return Record(**fields, source=source, line=line, meta=meta)


def _prompt_completion(row: dict) -> dict:
    prompt, completion = _string(row, "prompt"), _string(row, "completion")
    return _chat(row, prompt, completion)


def _alpaca(row: dict) -> dict:
    prompt = _string(row, "instruction")
    extra_input = _optional_string(row, "input")
    output = _string(row, "output")
    return _chat(row, f"{prompt}\n\n{extra_input}" if extra_input else prompt, output)


def _chat(row: dict, prompt: str, completion: str) -> dict:
    system = _optional_string(row, "system")
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return {"kind": "chat", "messages": messages}


def _messages(row: dict) -> dict:
    return {"kind": "chat", "messages": _turns(row, "messages", "role", "content", _MESSAGE_ROLES)}


def _sharegpt(row: dict) -> dict:
    return {"kind": "chat", "messages": _turns(row, "conversations", "from", "value", _SHAREGPT_ROLES)}


def _text(row: dict) -> dict:
    return {"kind": "text", "text": _string(row, "text")}


def _text_label(row: dict) -> dict:
    return {"kind": "labeled", "text": _string(row, "text"), "label": _label(row)}


_BUILDERS = {
    "prompt_completion": _prompt_completion,
    "alpaca": _alpaca,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "text": _text,
    "text_label": _text_label,
}


def _string(row: dict, key: str) -> str:
    if key not in row:
        raise _RowError(f'missing "{key}" {MISSING_HINT}')
    return _content(row[key], f'"{key}"')


def _optional_string(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and (not value or value.isspace())):
        return None
    return _content(value, f'"{key}"')


def _content(value, where: str) -> str:
    """A non-blank string that can be written as UTF-8, or a reason naming `where`."""
    if value is None or (isinstance(value, str) and (not value or value.isspace())):
        raise _RowError(f"{where} is empty")
    if not isinstance(value, str):
        raise _RowError(f"{where} must be a string, got {_type_name(value)}")
    if _SURROGATE.search(value):
        raise _RowError(f"{where} contains an unpaired surrogate (a broken \\u escape)")
    return value


def _label(row: dict) -> str:
    if "label" not in row:
        raise _RowError(f'missing "label" {MISSING_HINT}')
    value = row["label"]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is not None and not isinstance(value, str):
        raise _RowError(f'"label" must be a string, integer or boolean, got {_type_name(value)}')
    return _content(value, '"label"')


def _turns(row: dict, key: str, role_key: str, content_key: str, role_names: dict) -> list[dict]:
    """Canonical {role, content} turns from a list of turn objects, checked one by one."""
    turns = _structured(row[key], f'"{key}"')
    if turns is None or turns == []:
        raise _RowError(f'"{key}" is empty')
    if not isinstance(turns, list):
        raise _RowError(
            f'"{key}" must be a list of {{{role_key}, {content_key}}} objects, got {_type_name(turns)}'
        )
    messages = []
    for i, turn in enumerate(turns):
        where = f'"{key}"[{i}]'
        if not isinstance(turn, dict):
            raise _RowError(f"{where} must be an object, got {_type_name(turn)}")
        unsupported = [k for k, v in turn.items() if k not in (role_key, content_key) and v is not None]
        if unsupported:
            raise _RowError(f"{where} has unsupported key(s) {_quote_all(unsupported)}; "
                            f"expected {role_key} and {content_key}")
        for field in (role_key, content_key):
            if field not in turn:
                raise _RowError(f'{where} is missing "{field}"')
        name = turn[role_key]
        role = role_names.get(name) if isinstance(name, str) else None
        if role is None:
            *others, last = role_names
            hint = " (tool turns are not supported)" if name in _TOOL_ROLES else ""
            raise _RowError(
                f"{where}.{role_key} is {_show(name)}; expected {', '.join(others)} or {last}{hint}"
            )
        messages.append({"role": role, "content": _content(turn[content_key], f"{where}.{content_key}")})
    _check_turn_order(messages, key)
    return messages


def _check_turn_order(messages: list[dict], key: str) -> None:
    """An optional system turn first, then user and assistant alternating, starting with user."""
    for i in range(1, len(messages)):
        role = messages[i]["role"]
        if role == "system":
            raise _RowError(f'"{key}"[{i}] is a system turn; only the first turn may be system')
        if role == messages[i - 1]["role"]:
            raise _RowError(f'"{key}"[{i}] repeats role "{role}"; turns must alternate user and assistant')
    first = 1 if messages[0]["role"] == "system" else 0
    if first < len(messages) and messages[first]["role"] == "assistant":
        raise _RowError(f'"{key}"[{first}] is an assistant turn before any user turn')
    if not any(turn["role"] == "assistant" for turn in messages):
        raise _RowError(f'"{key}" has no assistant turn')


def _structured(value, where: str):
    """Lists and objects arrive as JSON text from CSV cells (and some JSON exports); decode them."""
    if not isinstance(value, str):
        return value
    if not value or value.isspace():
        return None
    try:
        return json.loads(value)
    except ValueError as error:
        raise _RowError(f"{where} is not valid JSON: {_json_problem(error)}") from None
    except RecursionError:
        raise _RowError(f"{where} is not valid JSON: nested too deeply") from None


def _meta(row: dict, extra_keys: list[str]) -> dict:
    """id, source, meta/metadata (merged) and any kept extra columns, as plain JSON values."""
    meta: dict = {}
    for key in ("meta", "metadata"):
        value = _structured(row.get(key), f'"{key}"')
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _RowError(f'"{key}" must be an object, got {_type_name(value)}')
        meta.update(value)
    for key in ("id", "source", *extra_keys):
        if row.get(key) not in (None, ""):
            meta[key] = row[key]
    if not meta:
        return meta
    encoded = json.dumps(meta, ensure_ascii=False, default=str)
    if _SURROGATE.search(encoded):
        raise _RowError('"meta" contains an unpaired surrogate (a broken \\u escape)')
    return json.loads(encoded)


def _type_name(value) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number",
             str: "string", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _show(value) -> str:
    return json.dumps(value, default=str)[:80]


def _quote_all(keys: Iterable) -> str:
    return ", ".join(json.dumps(str(key)) for key in keys)
