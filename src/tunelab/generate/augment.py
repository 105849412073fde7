"""``tunelab data augment``: more phrasings of the same inputs, each copy linked to its source row.

Two kinds of copies, both of a row's input only (the last user turn of a chat, or the text of a
text/label row), so answers and labels stay as they were:
- paraphrases sampled from a model, run locally or asked of an OpenAI-compatible server;
- cheap EDA-style word edits: random word swaps and random word deletions, seeded.

Sources are written too, with ``meta.row_hash``; every copy carries ``meta.augmented_from`` (its
source's row hash) and ``meta.augmentation``. Splitting (tunelab.data.split) uses that link to keep
copies with their source in train and out of val/test. A copy that fails a check (empty, identical
to its source, repetitive, far too short or long) goes to the quarantine file with its reason.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tunelab.config import AugmentConfig, RunConfig, validate_section
from tunelab.data.formats import read_records
from tunelab.data.records import Record, Rejected
from tunelab.data.split import AUGMENTED_FROM, ROW_HASH, is_augmented, rejected, row_hash
from tunelab.errors import TunelabError
from tunelab.generate.generators import LocalGenerator, ServerGenerator
from tunelab.io import atomic_write_jsonl

_WORD = re.compile(r"\S+")
_QUOTES = "\"'“”‘’`"
_BROKEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")  # control characters, undecodable bytes
_LEADING_LABEL = re.compile(r"^[A-Za-z]+(?: [A-Za-z]+){0,2}:\s+(?=\S)")  # "Paraphrase: ", "Original text: "


def augment_config(**values) -> AugmentConfig:
    """The settings from command-line values; None means "not given", so the config default applies."""
    return validate_section(AugmentConfig, {k: v for k, v in values.items() if v is not None}, "data augment")


def augment_file(path, out, config: AugmentConfig) -> dict:
    """Read ``path``, write its rows and their augmented copies to ``out`` (JSONL) and the rejected
    rows and copies to ``<out>.quarantine.jsonl``; return a summary."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise TunelabError(f"--out must name a .jsonl file, got {out}")
    if out.resolve() == Path(path).resolve():
        raise TunelabError(f"--out {out} is the input file; write the augmented data to a new file")
    records, unreadable = read_records(path, on_error="quarantine")
    quarantine: list[Rejected] = []
    rows = augment_records(records, config, quarantine)
    quarantine_path = out.with_name(f"{out.stem}.quarantine.jsonl")
    atomic_write_jsonl(out, (r.to_json() for r in rows))
    atomic_write_jsonl(quarantine_path, (r.to_json() for r in unreadable + quarantine))
    made = Counter(r.meta["augmentation"] for r in rows if r.meta.get("augmentation"))
    reasons = Counter(r.reason.split(":", 1)[0] for r in quarantine)
    if unreadable:
        reasons["unreadable input row"] = len(unreadable)
    return {
        "input": str(path),
        "output": str(out),
        "rows_written": len(rows),
        "sources": sum(not is_augmented(r) for r in rows),
        "augmented": {name: made[name] for name in ("paraphrase", "swap", "delete") if made[name]},
        "quarantined": len(unreadable) + len(quarantine),
        "quarantine_reasons": dict(reasons.most_common()),
        "quarantine_file": str(quarantine_path),
    }


def format_summary(summary: dict) -> str:
    made = ", ".join(f"{n} {name}" for name, n in summary["augmented"].items()) or "no copies"
    lines = [f"Wrote {summary['rows_written']} rows to {summary['output']}: {summary['sources']} source "
             f"rows and {made}"]
    if summary["quarantined"]:
        lines.append(f"Quarantined {summary['quarantined']} (see {summary['quarantine_file']}):")
        width = max(len(reason) for reason in summary["quarantine_reasons"])
        lines += [f"  {reason:<{width}}  {n}" for reason, n in summary["quarantine_reasons"].items()]
    else:
        lines.append("Nothing quarantined.")
    return "\n".join(lines)


def augment_records(records: list[Record], config: AugmentConfig, quarantine: list[Rejected]) -> list[Record]:
    """Each source row (marked with its row hash) followed by its augmented copies. Rows that are
    already augmented copies pass through unchanged and are not augmented again."""
    sources = [replace(r, meta={**r.meta, ROW_HASH: row_hash(r)}) for r in records if not is_augmented(r)]
    copies: dict[int, list[Record]] = {id(s): [] for s in sources}
    texts = [input_text(s) for s in sources]
    for source, text in zip(sources, texts, strict=True):
        if text is None:
            quarantine.append(rejected(source, "no user turn to augment"))
    if config.paraphrases:
        _add_paraphrases(sources, texts, config, copies, quarantine)
    for op in config.ops:
        for source, text in zip(sources, texts, strict=True):
            if text is not None:
                _add_edit(source, text, op, config, copies, quarantine)
    marked = iter(sources)  # the non-augmented records, in order
    out: list[Record] = []
    for record in records:
        if is_augmented(record):
            out.append(record)
        else:
            source = next(marked)
            out += [source, *copies[id(source)]]
    return out


def input_text(record: Record) -> str | None:
    """What augmentation rewrites: the last user turn of a chat, else the text (None: no user turn)."""
    if record.kind != "chat":
        return record.text
    users = [t["content"] for t in record.messages if t["role"] == "user"]
    return users[-1] if users else None


def with_input_text(record: Record, text: str, augmentation: str, **extra) -> Record:
    """An augmented copy of a source row: its input replaced, everything else (answers, labels) kept."""
    meta = {AUGMENTED_FROM: record.meta[ROW_HASH], "augmentation": augmentation, **extra}
    if record.kind != "chat":
        return replace(record, text=text, meta=meta)
    last_user = max(i for i, t in enumerate(record.messages) if t["role"] == "user")
    messages = [dict(t) for t in record.messages]
    messages[last_user]["content"] = text
    return replace(record, messages=messages, meta=meta)


# Word edits ------------------------------------------------------------------------------------

def swap_words(text: str, swaps: int, rng: random.Random) -> tuple[str, int]:
    """``text`` with ``swaps`` disjoint random pairs of words exchanged, spacing and line breaks kept.
    Returns the new text and the swaps made (fewer when there are under 2 * swaps words)."""
    spans = [m.span() for m in _WORD.finditer(text)]
    words = [text[start:end] for start, end in spans]
    swaps = min(swaps, len(words) // 2)
    positions = rng.sample(range(len(words)), 2 * swaps)
    for i, j in zip(positions[::2], positions[1::2], strict=True):
        words[i], words[j] = words[j], words[i]
    pieces, previous_end = [], 0
    for (start, end), word in zip(spans, words, strict=True):
        pieces += [text[previous_end:start], word]
        previous_end = end
    return "".join(pieces) + text[previous_end:], swaps


def delete_words(text: str, deletions: int, rng: random.Random) -> tuple[str, int]:
    """``text`` without ``deletions`` random words (at least one word always remains), each kept word
    followed by its own spacing. Returns the new text and the words deleted."""
    spans = [m.span() for m in _WORD.finditer(text)]
    deletions = max(0, min(deletions, len(spans) - 1))
    gone = set(rng.sample(range(len(spans)), deletions))
    kept = [i for i in range(len(spans)) if i not in gone]
    pieces = [text[:spans[0][0]]] if spans else []
    for n, i in enumerate(kept):
        start, end = spans[i]
        pieces.append(text[start:end])
        if n < len(kept) - 1:
            pieces.append(text[end:spans[i + 1][0]])
    if kept:
        pieces.append(text[spans[-1][1]:])
    return "".join(pieces), deletions


def _add_edit(source: Record, text: str, op: str, config: AugmentConfig, copies: dict,
              quarantine: list[Rejected]) -> None:
    # Seeded per row and operation, so a row's copies do not depend on the rest of the file.
    rng = random.Random(f"{config.seed}:{op}:{source.meta[ROW_HASH]}")
    edit = {"swap": swap_words, "delete": delete_words}[op]
    edited, count = edit(text, config.ops_per_row, rng)
    copy = with_input_text(source, edited, op, edits=count)
    if count == 0:
        quarantine.append(rejected(copy, f"too short to {op} words: {_words(len(_WORD.findall(text)))}"))
    elif edited == text:
        quarantine.append(rejected(copy, f"{op} left the text unchanged: the swapped words are equal"))
    else:
        copies[id(source)].append(copy)


# Paraphrases -----------------------------------------------------------------------------------

def paraphrase_problem(source: str, paraphrase: str, config: AugmentConfig) -> str | None:
    """Why a paraphrase cannot be used (a quarantine reason), or None when it passes."""
    if not paraphrase.strip():
        return "empty paraphrase"
    if _squash(paraphrase) == _squash(source):
        return "paraphrase identical to the source"
    if _squash(source) in _squash(paraphrase):
        return "paraphrase repeats the source word for word"
    words, source_words = paraphrase.split(), len(source.split())
    if _BROKEN.search(paraphrase) and not _BROKEN.search(source):
        return "degenerate paraphrase: broken characters"
    if _repeats_itself(words):
        return "degenerate paraphrase: it repeats itself"
    lead = _squash(config.instruction.split("{text}")[0])[:40]
    if lead and lead in _squash(paraphrase):
        return "degenerate paraphrase: it repeats the instruction"
    if len(words) < config.min_length_ratio * source_words:
        return f"paraphrase too short: {_words(len(words))} for a source of {_words(source_words)}"
    if len(words) > config.max_length_ratio * source_words:
        return f"paraphrase too long: {_words(len(words))} for a source of {_words(source_words)}"
    return None


def clean_paraphrase(output: str, source: str) -> str:
    """The paraphrase from a model reply: without a leading "Here is ...:" line or "Paraphrase:" label,
    surrounding quotes, or the extra paragraphs small models add after a one-paragraph source."""
    text = output.strip()
    first, _, rest = text.partition("\n")
    if first.rstrip().endswith(":") and rest.strip():
        text = rest.strip()
    text = _LEADING_LABEL.sub("", text)
    if "\n\n" not in source.strip():
        text = text.split("\n\n")[0].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _add_paraphrases(sources: list[Record], texts: list[str | None], config: AugmentConfig, copies: dict,
                     quarantine: list[Rejected]) -> None:
    todo = [(s, t) for s, t in zip(sources, texts, strict=True) if t is not None]
    if not todo:
        return
    prompts = [config.instruction.format(text=text) for _, text in todo]
    if config.server:
        outputs = paraphrase_with_server(prompts, config)
    else:
        outputs = paraphrase_with_model(prompts, config)
    for (source, text), replies in zip(todo, outputs, strict=True):
        seen: set[str] = set()
        for reply in replies:
            paraphrase = clean_paraphrase(reply, text)
            copy = with_input_text(source, paraphrase, "paraphrase")
            problem = paraphrase_problem(text, paraphrase, config)
            if problem is None and _squash(paraphrase) in seen:
                problem = "duplicate of another paraphrase of the same row"
            if problem:
                quarantine.append(rejected(copy, problem))
                continue
            seen.add(_squash(paraphrase))
            copies[id(source)].append(copy)


def paraphrase_with_model(prompts: list[str], config: AugmentConfig) -> list[list[str]]:
    """``config.paraphrases`` sampled replies per user prompt from a local model, in batches."""
    generator = LocalGenerator(config.model or RunConfig().model, batch_size=config.batch_size, seed=config.seed,
                               sampling={"temperature": config.temperature, "top_p": config.top_p})
    n = config.paraphrases
    replies = generator.complete([[{"role": "user", "content": p}] for p in prompts for _ in range(n)],
                                 config.max_new_tokens, desc="paraphrasing")
    return [replies[i * n:(i + 1) * n] for i in range(len(prompts))]


def paraphrase_with_server(prompts: list[str], config: AugmentConfig) -> list[list[str]]:
    """``config.paraphrases`` sampled replies per user prompt from an OpenAI-compatible server, each
    request with its own seed."""
    server = ServerGenerator(config.server, config.model, seed=config.seed, timeout=config.timeout,
                             temperature=config.temperature, top_p=config.top_p, api_key=config.api_key,
                             workers=config.workers, auth_hint="pass --api-key or set OPENAI_API_KEY")
    n = config.paraphrases
    conversations = [[{"role": "user", "content": p}] for p in prompts for _ in range(n)]
    replies = server.complete(conversations, config.max_new_tokens, desc="paraphrasing",
                              seeds=[config.seed + j for j in range(len(conversations))])
    return [replies[i * n:(i + 1) * n] for i in range(len(prompts))]


def _words(n: int) -> str:
    return f"{n} word" if n == 1 else f"{n} words"


def _squash(text: str) -> str:
    """Case, punctuation at the ends and spacing aside, for comparing texts."""
    return " ".join(text.lower().split()).strip(" .!?" + _QUOTES)


def _repeats_itself(words: list[str]) -> bool:
    """A word run four times in a row, or a three-word phrase three times: sampling got stuck."""
    lowered = [w.lower() for w in words]
    if any(len(set(lowered[i:i + 4])) == 1 for i in range(len(lowered) - 3)):
        return True
    trigrams = Counter(zip(lowered, lowered[1:], lowered[2:], strict=False))
    return bool(trigrams) and max(trigrams.values()) >= 3
