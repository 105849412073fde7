"""The canonical record every reader produces and every later stage consumes.

Five input shapes map onto three kinds:
- ``chat``: prompt/completion, alpaca instruction/input/output, OpenAI ``messages`` and ShareGPT
  ``conversations`` all become a list of ``{"role", "content"}`` turns (system/user/assistant).
- ``text``: raw text for continued pretraining.
- ``labeled``: ``text`` plus a string ``label``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RecordKind = Literal["chat", "text", "labeled"]
ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    kind: RecordKind
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    label: str | None = None
    source: str = ""
    line: int = 0
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The canonical JSON row written to prepared files (re-readable by any reader)."""
        if self.kind == "chat":
            row: dict = {"messages": self.messages}
        elif self.kind == "text":
            row = {"text": self.text}
        else:
            row = {"text": self.text, "label": self.label}
        if self.meta:
            row["meta"] = self.meta
        return row


@dataclass
class Rejected:
    """A row that could not become a Record, kept with its reason for the quarantine file."""

    source: str
    line: int
    reason: str
    raw: str

    def to_json(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason, "raw": self.raw}
