"""Reading and writing files that hold user content: encrypted when a master key is set, plaintext otherwise.

Every writer here is atomic (the old file or the complete new one, never half of one; see ``tunelab.io``), and
an encrypted file's bytes go straight from memory through the cipher to its temporary file, so no plaintext
copy touches the disk. Every reader accepts both kinds, so data written before a key was set stays readable.
Files that hold no user content (configs, metrics, hashes) keep using ``tunelab.io`` and stay plaintext.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tunelab.errors import TunelabError
from tunelab.io import atomic_writer
from tunelab.security.crypto import MAGIC, EncryptingWriter, decrypt, encrypt, is_encrypted, iter_decrypt
from tunelab.security.master_key import keyring


def encryption_on() -> bool:
    return keyring() is not None


@contextmanager
def sealed_writer(path: str | Path, text: bool = False) -> Iterator[IO]:
    """A file to write in pieces (bytes, or str with ``text=True``); encrypted when a key is set."""
    ring = keyring()
    with atomic_writer(path) as raw:
        sink = EncryptingWriter(raw, ring.current) if ring is not None else raw
        yield _TextSink(sink) if text else sink
        if ring is not None:
            sink.close()


class _TextSink:
    def __init__(self, sink):
        self.sink = sink

    def write(self, text: str) -> int:
        self.sink.write(text.encode("utf-8"))
        return len(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with sealed_writer(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    with sealed_writer(path, text=True) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def seal(data: bytes) -> bytes:
    """``data`` encrypted under the current key (as the bytes of an encrypted file), or unchanged with no key."""
    ring = keyring()
    return encrypt(data, ring.current) if ring is not None else data


def unseal(blob: bytes, where: str = "data") -> bytes:
    """The plaintext of ``blob`` when it is encrypted, else ``blob`` itself."""
    if not is_encrypted(blob):
        return blob
    return decrypt(blob, keyring_for(where), where)


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    blob = path.read_bytes()
    return unseal(blob, str(path))


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str | Path):
    """The JSON in ``path``, or None when there is no such file."""
    path = Path(path)
    return json.loads(read_text(path)) if path.exists() else None


def open_readable(path: str | Path, mode: str = "rb", encoding: str | None = None, newline: str | None = None) -> IO:
    """``open(path, mode)`` for reading, decrypting on the fly when the file is encrypted (a segment at a time)."""
    path = Path(path)
    if "b" not in mode:
        return io.TextIOWrapper(open_readable(path), encoding=encoding or "utf-8", newline=newline)
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if not is_encrypted(raw.read(len(MAGIC))):
        raw.seek(0)
        return raw
    raw.seek(0)
    return io.BufferedReader(_DecryptingStream(raw, keyring_for(str(path)), str(path)))


class _DecryptingStream(io.RawIOBase):
    def __init__(self, raw: IO[bytes], ring, where: str):
        self.raw, self.chunks, self.pending = raw, iter_decrypt(raw, ring, where), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = chunk
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def iter_lines(path: str | Path) -> Iterator[str]:
    """The lines of a text file (without line ends), decrypted a segment at a time."""
    with open_readable(path, "r", newline="") as f:
        for line in f:
            yield line.rstrip("\r\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file (empty when there is none); a plaintext line cut short by a killed run is
    skipped (an encrypted file is written whole, so it is never cut short without an error)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in iter_lines(path):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def keyring_for(where: str):
    """The keyring, or one clear error naming the encrypted thing that needs it."""
    ring = keyring()
    if ring is None:
        raise TunelabError(f"{where} is encrypted; set TUNELAB_KEY or TUNELAB_KEY_FILE to the key it was "
                           "written with")
    return ring


def decrypt_folder(source: str | Path, out: str | Path) -> tuple[int, int]:
    """Write a plaintext copy of ``source`` (every file under it) to the new folder ``out``: encrypted files
    decrypted a segment at a time, the others copied, modes kept. This is where content deliberately leaves
    encryption at rest (for a server that cannot read encrypted files). ``out`` is complete or absent (written
    beside it, then renamed). Returns (files decrypted, files copied)."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise TunelabError(f"{source} is not a folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError(f"output folder {out} already exists; remove it or choose another --out")
    if out.resolve().is_relative_to(source.resolve()):
        raise TunelabError(f"--out {out} lies inside {source}; choose a folder outside it")
    links = [p for p in sorted(source.rglob("*")) if p.is_symlink()]
    if links:
        raise TunelabError(f"{links[0]} is a symbolic link; tunelab decrypt copies regular files only")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.decrypting-", dir=out.parent))
    counts = [0, 0]
    try:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            target = staging / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as f:
                encrypted = is_encrypted(f.read(len(MAGIC)))
            if encrypted:
                with open_readable(path) as plain, open(target, "wb") as written:
                    shutil.copyfileobj(plain, written, 1 << 20)
                shutil.copymode(path, target)
            else:
                shutil.copy2(path, target)
            counts[0 if encrypted else 1] += 1
        os.replace(staging, out)  # replaces an empty `out`; a non-empty one was refused up front
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts[0], counts[1]

