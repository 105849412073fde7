"""Records as (source, target) text pairs for encoder-decoder models, and their token ids.

A chat record's source is the conversation before its last assistant turn and its target is that
turn; a text/label row's source is the label prompt and its target is the label. Training, evaluation
and export all build pairs here, so an encoder reads the same source everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.records import Record
from tunelab.data.templates import Encoded
from tunelab.errors import TunelabError


@dataclass
class Pair:
    source: str  # what the encoder reads
    target: str  # what the decoder learns to write
    shown: str  # the input as predictions.jsonl shows it


def record_pair(record: Record, choices: list[str] | None, label_prompt: str, system_prompt: str | None) -> Pair:
    """The source and target texts of one chat or labeled record."""
    if record.kind == "labeled":
        source = label_prompt.format(text=record.text, choices=", ".join(choices or []))
        return Pair("\n\n".join(filter(None, [system_prompt, source])), record.label, record.text)
    if record.kind != "chat":
        raise TunelabError("raw-text records have no target; task: seq2seq needs chat or text/label rows")
    messages = record.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    system = [m["content"] for m in messages[:last] if m["role"] == "system"] or [system_prompt]
    turns = [m for m in messages[:last] if m["role"] != "system"]
    if len(turns) == 1:
        conversation = turns[0]["content"]  # a single question reads best as itself
    else:
        conversation = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)
    return Pair("\n\n".join(filter(None, [*system, conversation])), messages[last]["content"], turns[-1]["content"])


def record_pairs(records: list[Record], choices: list[str] | None, label_prompt: str,
                 system_prompt: str | None) -> list[Pair]:
    return [record_pair(r, choices, label_prompt, system_prompt) for r in records]


def target_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Target token ids, always ending in the end token so the decoder learns where to stop."""
    encoded = tokenizer(text_target=texts, truncation=True, max_length=max_length)["input_ids"]
    eos = tokenizer.eos_token_id
    return [ids if eos is None or ids[-1:] == [eos] else ids[:max_length - 1] + [eos] for ids in encoded]


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int) -> list[Encoded]:
    """Source ids as input_ids and target ids as labels, each cut at max_length."""
    if not pairs:
        return []  # the tokenizer refuses an empty batch
    sources = tokenizer([p.source for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    targets = target_ids(tokenizer, [p.target for p in pairs], max_length)
    return [Encoded(source, target) for source, target in zip(sources, targets)]


def as_feature(example: Encoded) -> dict:
    return {"input_ids": example.input_ids, "attention_mask": [1] * len(example.input_ids), "labels": example.labels}
