"""Generated tokens to text, safely streamable: no half characters, no pieces of a stop string.

A client must never see text it would not get in the final answer. So while streaming, text that
could still turn out to be the start of a stop string is held back until it cannot (vLLM #3574 is
the bug this prevents), and a token that ends inside a multi-byte character waits for the rest.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


class TextStream:
    """The text of one choice as its tokens arrive."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already given out
        self.text = ""
        self.stopped = False  # a stop string was found; the text ends before it

    def push(self, token: int) -> str:
        """Add a token; return the text that is now safe to send (maybe empty)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        at = self._first_stop(text)
        if at is not None:
            self.text, self.stopped = text[:at], True
            return self._send(len(self.text))
        self.text = text
        safe = len(text) - self._held_back(text)
        if text[:safe].endswith(REPLACEMENT):
            safe -= 1
        return self._send(safe)

    def finish(self) -> str:
        """Everything not yet sent (the generation ended without a stop string after it)."""
        return self._send(len(self.text))

    def _send(self, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece

    def _first_stop(self, text: str) -> int | None:
        """Where the earliest stop string begins in ``text``, looking only where a new one can be."""
        if not self.stop:
            return None
        start = max(0, self.sent - max(map(len, self.stop)))
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
