"""Disk-backed rows for ``tunelab data prepare``, so memory holds integers per row, not the rows.

``RowStore`` appends text rows to a file and reads any of them back by number; ``atomic_text_writer``
streams an output file of any size and moves it into place only once it is complete.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunelab.io import atomic_writer
from tunelab.security.files import encryption_on, sealed_writer

_WRITE_BUFFER = 1 << 20


class RowStore:
    """An append-only file of UTF-8 text rows, each read back by its number (8 bytes of memory a row)."""

    def __init__(self, path: str | Path):
        self._file = open(path, "w+b", buffering=_WRITE_BUFFER)  # noqa: SIM115 - closed in close()
        # With a master key set, rows are sealed under a key that lives only in this process's memory: the
        # spool is scratch, so nothing needs to read it after us, and no plaintext row touches the disk.
        self._cipher = AESGCM(AESGCM.generate_key(256)) if encryption_on() else None
        self._offsets = array("q", [0])
        self._unflushed = False

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, text: str) -> int:
        """Store ``text``; returns its row number."""
        data = text.encode("utf-8")
        if self._cipher is not None:
            data = self._cipher.encrypt(len(self._offsets).to_bytes(12, "big"), data, None)
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self._unflushed = True
        return len(self._offsets) - 2

    def read(self, row: int) -> str:
        if self._unflushed:
            self._file.flush()
            self._unflushed = False
        start = self._offsets[row]
        data = os.pread(self._file.fileno(), self._offsets[row + 1] - start, start)
        if self._cipher is not None:
            data = self._cipher.decrypt((row + 1).to_bytes(12, "big"), data, None)
        return data.decode("utf-8")

    def close(self) -> None:
        self._file.close()


def atomic_text_writer(path: str | Path):
    """A UTF-8 text file to write in pieces, moved into place only once complete (see tunelab.io), and encrypted
    when a master key is set."""
    if encryption_on():
        return sealed_writer(path, text=True)
    return atomic_writer(path, "w", encoding="utf-8", newline="", buffering=_WRITE_BUFFER)
