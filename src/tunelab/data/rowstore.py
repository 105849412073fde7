"""Disk-backed rows for ``tunelab data prepare``, so memory holds integers per row, not the rows.

``RowStore`` appends text rows to a file and reads any of them back by number; ``atomic_text_writer``
streams an output file of any size and moves it into place only once it is complete.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

from tunelab.io import atomic_writer

_WRITE_BUFFER = 1 << 20


class RowStore:
    """An append-only file of UTF-8 text rows, each read back by its number (8 bytes of memory a row)."""

    def __init__(self, path: str | Path):
        self._file = open(path, "w+b", buffering=_WRITE_BUFFER)  # noqa: SIM115 - closed in close()
        self._offsets = array("q", [0])
        self._unflushed = False

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, text: str) -> int:
        """Store ``text``; returns its row number."""
        data = text.encode("utf-8")
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self._unflushed = True
        return len(self._offsets) - 2

    def read(self, row: int) -> str:
        if self._unflushed:
            self._file.flush()
            self._unflushed = False
        start = self._offsets[row]
        return os.pread(self._file.fileno(), self._offsets[row + 1] - start, start).decode("utf-8")

    def close(self) -> None:
        self._file.close()


def atomic_text_writer(path: str | Path):
    """A UTF-8 text file to write in pieces, moved into place only once complete (see tunelab.io)."""
    return atomic_writer(path, "w", encoding="utf-8", newline="", buffering=_WRITE_BUFFER)
