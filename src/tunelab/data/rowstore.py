"""Disk-backed rows for ``tunelab data prepare``, so memory holds integers per row, not the rows.

``RowStore`` appends text rows to a file and reads any of them back by number; ``atomic_text_writer``
streams an output file of any size and moves it into place only once it is complete.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

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


@contextmanager
def atomic_text_writer(path: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file to write in pieces; it replaces ``path`` when the block ends without an error,
    and is removed otherwise, so readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with open(fd, "w", encoding="utf-8", newline="", buffering=_WRITE_BUFFER) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
