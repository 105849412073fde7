"""``tunelab data export --format openai``: a data file as chat JSONL for hosted fine-tuning APIs.

Each row becomes ``{"messages": [...]}`` (labeled rows get the instruction prompt tunelab trains
with), then every example goes through the checks the hosted services publish for uploads, so a
file is rejected here, with line numbers, rather than after upload. Nothing is written while any
example fails, unless the caller asks to drop the failures into a rejected file.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.formats import MAX_RAW_CHARS, common_kind, read_records
from tunelab.data.prepare import reason_category
from tunelab.data.records import ROLES, Rejected
from tunelab.data.templates import record_to_messages
from tunelab.errors import DataError, TunelabError
from tunelab.io import atomic_write_jsonl

FORMATS = ("openai",)
DEFAULT_MODEL_LIMIT = 16385  # tokens per training example
DEFAULT_EPOCHS = 3  # what hosted fine-tuning runs when no epoch count is set
MESSAGE_KEYS = ("role", "content", "name", "weight")  # keys a chat message may carry
CHARS_PER_TOKEN = 4  # the estimate used without tiktoken
TOKENS_PER_MESSAGE = 3  # chat formatting around each message
TOKENS_PER_REPLY = 3  # the assistant reply's opening
SHOWN_EXAMPLES = 5  # failing examples listed by line in the check report
# Reader rejections named as the check that covers the same problem.
_READER_KINDS = {"unsupported key": "unknown key", "unknown column": "unknown key", "empty field": "empty content"}

Problem = tuple[str, str]  # (kind, detail)


@dataclass
class Example:
    source: str
    line: int
    row: dict | None  # the chat example; None when the row could not be read at all
    raw: str  # the row as read or converted (cut short like quarantine rows), for the rejected file
    problems: list[Problem] = field(default_factory=list)
    tokens: int | None = None

    @property
    def reason(self) -> str:
        """Each problem as "kind: detail" (a reader's reason may already start with its kind)."""
        return "; ".join(detail if detail.startswith(kind) else f"{kind}: {detail}"
                         for kind, detail in self.problems)


@dataclass
class ExportCheck:
    """The converted examples of one file, each with its problems and token count."""

    path: str
    examples: list[Example]
    model_limit: int
    epochs: int
    counted_with: str

    @property
    def valid(self) -> list[Example]:
        return [e for e in self.examples if not e.problems]

    @property
    def invalid(self) -> list[Example]:
        return [e for e in self.examples if e.problems]

    @property
    def over_limit(self) -> list[Example]:
        return [e for e in self.examples if e.tokens is not None and e.tokens > self.model_limit]

    def problem_counts(self) -> dict[str, int]:
        counts = Counter(kind for e in self.examples for kind in dict(e.problems))
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def tokens_per_epoch(self) -> int:
        return sum(e.tokens for e in self.valid)


def token_counter() -> tuple[Callable[[str], int], str]:
    """tiktoken's cl100k_base when it is installed and can load, else 4 characters per token."""
    try:
        import tiktoken
    except ImportError:
        return _estimate, "estimated at 4 characters per token, since tiktoken is not installed"
    try:
        encoding = tiktoken.get_encoding("cl100k_base")
    except Exception as error:  # the first load downloads the encoding, which can fail in many ways
        return _estimate, f"estimated at 4 characters per token, since tiktoken could not load cl100k_base: {error}"
    return (lambda text: len(encoding.encode(text, disallowed_special=()))), "counted with tiktoken cl100k_base"


def _estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def example_tokens(messages: list[dict], count: Callable[[str], int]) -> int:
    """Tokens of one chat example as the hosted services count them: each message's role and
    content plus a few formatting tokens per message and for the reply."""
    return sum(TOKENS_PER_MESSAGE + count(m["role"]) + count(m["content"]) for m in messages) + TOKENS_PER_REPLY


def format_problems(example) -> list[Problem]:
    """Every problem the hosted format checks would report for one example; empty when it passes."""
    if not isinstance(example, dict):
        return [("wrong type", "the example is not a JSON object")]
    problems: list[Problem] = []
    extra = [key for key in example if key != "messages"]
    if extra:
        problems.append(("unknown key", f"{_quoted(extra)}; an example holds only \"messages\""))
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append(("missing messages", '"messages" must be a non-empty list of {role, content} objects'))
        return problems
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(("wrong type", f"{where} is not an object"))
            continue
        extra = [key for key in message if key not in MESSAGE_KEYS]
        if extra:
            problems.append(("unknown key", f"{where} has {_quoted(extra)}; expected role and content"))
        role = message.get("role")
        if role not in ROLES:
            problems.append(("invalid role", f"{where}.role is {json.dumps(role)}; expected system, user or assistant"))
        elif role == "system" and i > 0:
            problems.append(("turn order", f"{where} is a system message; only the first message may be system"))
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(("empty content", f"{where}.content must be a non-empty string"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append(("no assistant message", "an example needs at least one assistant message"))
    return problems


def check_export(
    path,
    model_limit: int = DEFAULT_MODEL_LIMIT,
    system_prompt: str | None = None,
    epochs: int = DEFAULT_EPOCHS,
    count: Callable[[str], int] | None = None,
    counted_with: str = "",
) -> ExportCheck:
    """Read ``path`` (any supported shape), convert each row to a chat example and check it.

    Labeled rows get tunelab's classification prompt with the file's sorted label set as choices;
    ``system_prompt`` is put first in examples that have no system message. Rows the reader
    rejects are kept as failing examples, so they show up in the check and the rejected file.
    """
    if model_limit < 1:
        raise TunelabError(f"model limit must be a positive number of tokens, got {model_limit}")
    if epochs < 1:
        raise TunelabError(f"epochs must be at least 1, got {epochs}")
    if count is None:
        count, counted_with = token_counter()
    records, rejected = read_records(path, on_error="quarantine")
    kind = common_kind(records)
    if kind == "text":
        raise DataError(path, "holds raw text rows, which have no prompt or answer to fine-tune a chat "
                              "model on; export chat rows (prompt/completion, messages, ...) or text/label rows")
    choices = sorted({r.label for r in records}) if kind == "labeled" else None
    examples = [Example(r.source, r.line, None, r.raw, [(_reader_kind(r.reason), r.reason)]) for r in rejected]
    for record in records:
        messages = record_to_messages(record, choices=choices)
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        row = {"messages": messages}
        raw = json.dumps(row, ensure_ascii=False)[:MAX_RAW_CHARS]
        examples.append(Example(record.source, record.line, row, raw))
    examples.sort(key=lambda e: e.line)
    for example in examples:
        if example.row is None:
            continue
        example.problems = format_problems(example.row)
        if not example.problems:
            example.tokens = example_tokens(example.row["messages"], count)
            if example.tokens > model_limit:
                example.problems.append(("over token limit", f"{example.tokens} tokens; the limit is {model_limit}"))
    return ExportCheck(str(path), examples, model_limit, epochs, counted_with)


def format_check(check: ExportCheck) -> str:
    """The short check report printed before anything is written."""
    invalid = check.invalid
    lines = [f"Checked {len(check.examples)} examples from {check.path} (tokens {check.counted_with}):",
             f"  valid {len(check.examples) - len(invalid)}, failing {len(invalid)}"]
    counts = check.problem_counts()
    if counts:
        lines.append("  problems: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
        # Examples whose only problem is their length are listed on the limit line below.
        malformed = [e for e in invalid if e.problems[0][0] != "over token limit"]
        for example in malformed[:SHOWN_EXAMPLES]:
            lines.append(f"    line {example.line}: {example.reason}")
        if len(malformed) > SHOWN_EXAMPLES:
            lines.append(f"    and {len(malformed) - SHOWN_EXAMPLES} more")
    over = check.over_limit
    if over:
        shown = ", ".join(f"line {e.line} ({e.tokens} tokens)" for e in over[:SHOWN_EXAMPLES])
        more = f" and {len(over) - SHOWN_EXAMPLES} more" if len(over) > SHOWN_EXAMPLES else ""
        lines.append(f"  over the {check.model_limit}-token limit: {shown}{more}")
    tokens = [e.tokens for e in check.examples if e.tokens is not None]
    if tokens:
        lines.append(f"  tokens per example: min {min(tokens)}, mean {statistics.fmean(tokens):.1f}, "
                     f"max {max(tokens)}")
    per_epoch = check.tokens_per_epoch()
    which = "all examples" if not invalid else f"the {len(check.valid)} valid examples"
    lines.append(f"  training tokens ({which}): {per_epoch:,} per epoch, {per_epoch * check.epochs:,} "
                 f"for {check.epochs} epochs")
    return "\n".join(lines)


def rejected_path(out) -> Path:
    """Where --drop-invalid puts failing examples: ``train.jsonl`` -> ``train.rejected.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix else out.name}.rejected.jsonl")


def write_export(check: ExportCheck, out, drop_invalid: bool = False) -> tuple[Path, Path | None]:
    """Write the examples to ``out``; refuse (writing nothing) while any fails, unless
    ``drop_invalid``, which writes the valid ones and the failures with reasons beside them.
    Returns the output path and the rejected file's path (None when not written)."""
    out = Path(out)
    invalid, valid = check.invalid, check.valid
    rejected = rejected_path(out)
    if invalid and not drop_invalid:
        raise TunelabError(
            f"{len(invalid)} of {len(check.examples)} examples fail the format checks; nothing written "
            f"to {out}. Fix them, or pass --drop-invalid to write the {len(valid)} valid ones and the "
            f"failures to {rejected}"
        )
    if not valid:
        raise TunelabError(f"none of the {len(check.examples)} examples pass the format checks; nothing written")
    atomic_write_jsonl(out, (e.row for e in valid))
    if not drop_invalid:
        return out, None
    atomic_write_jsonl(rejected, (Rejected(e.source, e.line, e.reason, e.raw).to_json() for e in invalid))
    return out, rejected


def _reader_kind(reason: str) -> str:
    category = reason_category(reason)
    return _READER_KINDS.get(category, category)


def _quoted(keys: list[str]) -> str:
    return ", ".join(json.dumps(str(key)) for key in keys)
