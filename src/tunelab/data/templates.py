"""One source of prompt formatting for training, evaluation and serving.

Every record becomes chat messages rendered by the model's own chat template, so the text a model
is trained on is byte for byte the text it sees at evaluation and serving time. Loss is taken on
assistant turns only (each turn's content and its end-of-turn token); everything else is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config import DEFAULT_LABEL_PROMPT
from tunelab.data.records import Record
from tunelab.errors import TunelabError

IGNORE_INDEX = -100
# Chat answers are treated as labels when at most this many distinct ones repeat often enough.
MAX_LABELS = 20


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def record_to_messages(record: Record, label_prompt: str = DEFAULT_LABEL_PROMPT,
                       choices: list[str] | None = None) -> list[dict[str, str]]:
    """Chat messages for a chat or labeled record (labeled -> instruction + label answer)."""
    if record.kind == "chat":
        return record.messages
    if record.kind == "labeled":
        prompt = label_prompt.format(text=record.text, choices=", ".join(choices or []))
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record.label}]
    raise TunelabError("raw-text records have no prompt; use task: pretrain for text data")


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if not system_prompt or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def to_messages(record: Record, choices, label_prompt: str, system_prompt: str | None) -> list[dict]:
    """A chat or labeled record as the messages a model trains and is evaluated on."""
    return with_system_prompt(record_to_messages(record, label_prompt, choices), system_prompt)


def label_choices(train: list[Record], kind: str) -> list[str] | None:
    """The label set, or None when answers are free text."""
    if kind == "labeled":
        return sorted({r.label for r in train})
    if kind != "chat":
        return None
    answers = [r.messages[-1]["content"] for r in train if r.messages[-1]["role"] == "assistant"]
    distinct = set(answers)
    if len(distinct) <= MAX_LABELS and len(answers) >= 5 * len(distinct):
        return sorted(distinct)
    return None


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError("the tokenizer has no chat template; use a chat/instruct model or set one "
                           "with tokenizer.chat_template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt for the final assistant turn: everything before it plus the assistant header."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return render(tokenizer, messages[:last], add_generation_prompt=True)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of every assistant answer, end token included."""
    full = render(tokenizer, messages)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        if not full.startswith(prefix):
            raise TunelabError("the chat template renders a conversation differently from its prefix; "
                               "per-turn prompt masking needs a prefix-stable template")
        start = full.find(message["content"], len(prefix))
        if start < 0:
            raise TunelabError("the chat template changed an assistant message; cannot locate it for masking")
        end = start + len(message["content"])
        if eos and full.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
    return full, spans


def encode_chat(tokenizer, messages: list[dict[str, str]], max_length: int) -> Encoded:
    """Token ids plus labels with every non-assistant token masked; truncated to ``max_length``."""
    full, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(enc["input_ids"])
    for k, (start, end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans) and end > start:
            labels[k] = enc["input_ids"][k]
    return Encoded(enc["input_ids"][:max_length], labels[:max_length])


def encode_text(tokenizer, text: str, max_length: int) -> list[Encoded]:
    """Raw text for continued pretraining: every token trained, long documents chunked."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    chunks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    # A one-token chunk has nothing to predict (a row's first token is never a target).
    return [Encoded(chunk, chunk) for chunk in chunks if len(chunk) > 1]
