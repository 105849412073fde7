"""The audit log: an append-only, hash-chained JSON-lines file of who did what, and its signed checkpoints.

Each line is one entry, its keys in sorted order::

    {"action":"models.promote","actor":"local:ana","hash":"<64 hex>","objects":{"alias":"production",...},
     "prev":"<64 hex>","seq":17,"time":"2026-03-01T09:30:12.345678+00:00"}

``seq`` counts from 0, ``prev`` is the previous entry's ``hash`` (64 zeros for the first), and ``hash`` is the
sha256 of the entry's canonical JSON without ``hash`` (sorted keys, no spaces, ASCII). ``objects`` holds ids
and hashes only (run ids, dataset versions and content hashes, model names and versions, aliases, key ids),
never user content: ``check_objects`` keeps a value too long or not printable to be an id only as its sha256.

Appends are serialized across processes by an exclusive ``flock`` on the file; each append is one
``write`` then ``fsync``. The newline ends an entry and is what commits it: a final line without its
newline is an append that did not finish (a crash or a full disk) and is not an entry. ``verify`` reports
it as an incomplete last entry, not as tampering. The next append, or ``repair``, cuts it off after
checking that it is no more than the unfinished start of one line, and records the cut as an
``audit.repair`` entry (the bytes' count and sha256) in the same write as the entry that follows it. An
append never chains onto such a line; bytes at the end that cannot be an unfinished entry are tampering.

The chain alone shows an edited, removed, added or reordered entry, but not a log whose end was cut off or
that was rewritten and re-chained from some entry on. Checkpoints close that: (length, head hash, time)
signed with HMAC-SHA256 under a 32-byte key kept apart from the log (the registry stores them). A log shorter
than a checkpoint was truncated; a log whose entry ``length - 1`` does not hash to the checkpoint's head was
rewritten. What was written after the newest checkpoint can still be cut off unseen, and whoever holds the
key can sign a forged log. The functions here take the key as an argument; they never look one up.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home

LOG_FILE = "audit.jsonl"
GENESIS = "0" * 64  # the prev of entry 0
CHECKPOINT_EVERY = 64  # entries between the checkpoints that appends sign on their own
FIELDS = frozenset({"seq", "time", "actor", "action", "objects", "prev", "hash"})
LINE_START = b'{"action":'  # every line starts so: canonical JSON sorts "action" first
MAX_LINE_BYTES = 16_384  # an entry is ids and hashes: far below this
MAX_VALUE_CHARS = 300  # a model name may be 200 characters; a prompt or a row does not fit
READ_CHUNK = 8192


def audit_path() -> Path:
    return tunelab_home() / LOG_FILE


def canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_objects(objects: dict) -> dict:
    """``objects`` without its None values. Values are ids: str, int or bool, or lists of them. A string too long
    or not printable to be an id (a path, or text by mistake) is kept only as ``sha256:<its hash>``."""
    kept = {}
    for name, value in objects.items():
        if value is None:
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for index, item in enumerate(items):
            if isinstance(item, float) or not isinstance(item, (str, int, bool)):
                raise TunelabError(f"audit object {name}: {type(item).__name__} is no id (use str, int or bool)")
            if isinstance(item, str) and (len(item) > MAX_VALUE_CHARS or not item.isprintable()):
                items[index] = "sha256:" + hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()
        kept[str(name)] = items if isinstance(value, (list, tuple)) else items[0]
    return kept


def unfinished_line(tail: bytes) -> bool:
    """Whether ``tail`` (the bytes after the last newline) can be the start of an entry an append left unfinished."""
    return (b"\n" not in tail and len(tail) < MAX_LINE_BYTES
            and tail[:len(LINE_START)] == LINE_START[:len(tail)])


# ---- the file

@dataclass
class Scan:
    """The log as read: its complete lines (newline removed) and the bytes of an unfinished last line."""

    lines: list[bytes]
    tail: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Scan:
        end = data.rfind(b"\n") + 1
        return cls(data[:end].splitlines(), data[end:])


class AuditLog:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else audit_path()
        self.repaired: dict | None = None  # the audit.repair entry the last append wrote first, if any

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int | None]:
        if exclusive:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        else:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                yield None
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def scan(self) -> Scan:
        """Every complete line and the unfinished tail, read under a shared lock (never half of an append)."""
        with self._locked(exclusive=False) as fd:
            if fd is None:
                return Scan([])
            return Scan.parse(_read_all(fd))

    def entries(self) -> list[dict]:
        """The complete entries, parsed; a line that is no JSON object is skipped (``verify`` names it)."""
        found = []
        for line in self.scan().lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found.append(entry)
        return found

    def append(self, action: str, actor: str, objects: dict | None = None, time: str | None = None) -> dict:
        """Write one entry after the last complete one and return it. An unfinished last line is cut off first,
        with an ``audit.repair`` entry (kept in ``self.repaired``) before this one, in the same write."""
        for name, value in (("action", action), ("actor", actor)):
            if not isinstance(value, str) or not value or len(value) > MAX_VALUE_CHARS or not value.isprintable():
                raise TunelabError(f"audit {name} {value!r}: a short printable name")
        return self._write(actor, time or utc_now(), (action, check_objects(objects or {})))[-1]

    def repair(self, actor: str) -> int:
        """Cut off an unfinished last line (what an interrupted append left) and record the cut as an
        ``audit.repair`` entry; returns the bytes cut, 0 when the log ends cleanly. Refused when the bytes at
        the end cannot be an unfinished entry."""
        self._write(actor, utc_now(), None)
        return self.repaired["objects"]["bytes"] if self.repaired else 0

    def _write(self, actor: str, time: str, own: tuple[str, dict] | None) -> list[dict]:
        self.repaired = None
        with self._locked(exclusive=True) as fd:
            size = os.fstat(fd).st_size
            end, tail = _split_tail(fd, size)
            if tail and not unfinished_line(tail):
                raise TunelabError(f"{self.path} ends with {len(tail)} bytes that are no unfinished entry; it was "
                                   f"altered (tunelab audit verify)")
            seq, prev = _after(fd, end, self.path)
            entries = []
            if tail:
                entries.append(_entry(seq, time, actor, "audit.repair",
                                      {"bytes": len(tail), "sha256": hashlib.sha256(tail).hexdigest()}, prev))
                seq, prev = seq + 1, entries[-1]["hash"]
            if own is not None:
                entries.append(_entry(seq, time, actor, own[0], own[1], prev))
            if not entries:
                return []
            lines = [canonical(e) + b"\n" for e in entries]
            if max(map(len, lines)) >= MAX_LINE_BYTES:
                raise TunelabError(f"audit entry {entries[-1]['action']} is over {MAX_LINE_BYTES} bytes: "
                                   "objects are ids")
            if tail:
                os.ftruncate(fd, end)  # a crash from here to the fsync loses only bytes that were never an entry
            _write_durably(fd, b"".join(lines), end)
            if size == 0:
                _fsync_dir(self.path.parent)
        self.repaired = entries[0] if tail else None
        return entries


def _entry(seq: int, time: str, actor: str, action: str, objects: dict, prev: str) -> dict:
    entry = {"seq": seq, "time": time, "actor": actor, "action": action, "objects": objects, "prev": prev}
    entry["hash"] = entry_hash(entry)
    return entry


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _split_tail(fd: int, size: int) -> tuple[int, bytes]:
    """(offset just after the last newline, the bytes after it), reading backwards from the end."""
    tail, position = b"", size
    while position > 0:
        start = max(0, position - READ_CHUNK)
        chunk = os.pread(fd, position - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1, chunk[newline + 1:] + tail
        tail, position = chunk + tail, start
        if len(tail) > MAX_LINE_BYTES:  # no entry is this long: the caller refuses it, no need to read further
            return position, tail
    return 0, tail


def _after(fd: int, end: int, path: Path) -> tuple[int, str]:
    """(seq, prev) for the entry after the last complete line, which ends at ``end``."""
    if end == 0:
        return 0, GENESIS
    line_start, _ = _split_tail(fd, end - 1)
    line = os.pread(fd, end - 1 - line_start, line_start)
    try:
        last = json.loads(line)
        seq, previous = last["seq"], last["hash"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(previous, str) or len(previous) != 64:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise TunelabError(f"the last entry of {path} is unreadable; nothing can be chained onto it "
                           f"(tunelab audit verify)") from None
    return seq + 1, previous


def _write_durably(fd: int, data: bytes, start: int) -> None:
    """One write (repeated only for what a short write left), then fsync. On an error the file is cut back to
    ``start``, so a full disk leaves no half entry behind when it can be helped."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass  # the unfinished line stays; the next append or repair cuts it off
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- checkpoints

@dataclass(frozen=True)
class Checkpoint:
    number: int  # its id in the store, as messages name it
    length: int  # entries covered: 0 .. length - 1
    head: str  # hash of entry length - 1
    signed: str  # UTC ISO time of signing
    mac: str


def checkpoint_mac(key: bytes, log: str, length: int, head: str, signed: str) -> str:
    """HMAC-SHA256 over the canonical JSON of what a checkpoint states, for the log named ``log``."""
    message = canonical({"head": head, "length": length, "log": log, "signed": signed})
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# ---- verification

@dataclass
class Verdict:
    ok: bool  # no sign of tampering (an unfinished last line is no sign of it)
    entries: int  # complete entries
    checkpoints: int  # checkpoints whose signature is valid and whose head the log matches
    head: str  # hash of the last complete entry (GENESIS for an empty log)
    problem: str | None = None  # the first problem, one line
    first_bad: int | None = None  # the earliest entry the problem puts in doubt
    unfinished: int = 0  # bytes of an unfinished last line

    def summary(self) -> str:
        if not self.ok:
            return f"tampered: {self.problem}"
        note = (f"; the log ends with an incomplete last entry ({self.unfinished} bytes of an append that did not "
                f"finish: the next append, or tunelab audit verify --repair, cuts it off)" if self.unfinished else "")
        return (f"ok: {self.entries} entries, {self.checkpoints} checkpoint{'s' * (self.checkpoints != 1)}, "
                f"head {self.head[:16]}{note}")


def verify(scan: Scan, key: bytes, log: str, checkpoints: list[Checkpoint]) -> Verdict:
    """Check the chain of ``scan`` and every checkpoint of ``log``; the first problem is named.

    The chain is read from entry 0: the first entry whose hash, seq or prev is wrong is named. A checkpoint
    with a wrong signature is reported before anything else (nothing it states can be trusted). Then, in
    order of length, each checkpoint must lie within the log and match the hash of its last entry; a
    mismatch puts in doubt every entry after the previous matching checkpoint. Of a chain problem and a
    checkpoint problem, the one that puts the earlier entry in doubt is reported.
    """
    hashes: list[str] = []
    chain_problem, doubted = None, None
    for index, line in enumerate(scan.lines):
        chain_problem, doubted, entry = _entry_problem(index, line, hashes[-1] if hashes else GENESIS)
        if chain_problem:
            break
        hashes.append(entry["hash"])
    total, intact = len(scan.lines), len(hashes)
    head = hashes[-1] if hashes else GENESIS

    def verdict(problem: str | None, first_bad: int | None, matched: int) -> Verdict:
        return Verdict(problem is None, total, matched, head, problem, first_bad, len(scan.tail))

    ordered = sorted(checkpoints, key=lambda c: (c.length, c.number))
    for checkpoint in sorted(checkpoints, key=lambda c: c.number):
        expected = checkpoint_mac(key, log, checkpoint.length, checkpoint.head, checkpoint.signed)
        if not hmac.compare_digest(expected.encode(), str(checkpoint.mac).encode("utf-8", "replace")):
            return verdict(f"checkpoint {checkpoint.number} signature is invalid (altered, or signed with another "
                           f"key)", None, 0)

    proven, matched = 0, 0  # entries 0 .. proven - 1 match a checkpoint
    checkpoint_problem = None
    for checkpoint in ordered:
        if checkpoint.length > intact:
            if chain_problem is None:  # the whole log is intact and shorter than what was signed
                checkpoint_problem = (f"log has {total} entries but checkpoint {checkpoint.number} (signed "
                                      f"{checkpoint.signed}) covers {checkpoint.length}: the tail was truncated")
            break
        if checkpoint.length and hashes[checkpoint.length - 1] != checkpoint.head:
            checkpoint_problem = (f"entry {checkpoint.length - 1} does not hash to the head of checkpoint "
                                  f"{checkpoint.number} (signed {checkpoint.signed}): an entry from {proven} to "
                                  f"{checkpoint.length - 1} was changed, added or removed and the log re-chained")
            break
        proven, matched = checkpoint.length, matched + 1
    if checkpoint_problem is not None:  # it doubts entries from ``proven`` on, never later than a chain problem
        return verdict(checkpoint_problem, proven, matched)
    if chain_problem is not None:
        return verdict(chain_problem, doubted, matched)
    if scan.tail and not unfinished_line(scan.tail):
        return verdict(f"the log ends with {len(scan.tail)} bytes after entry {total - 1} that are no unfinished "
                       f"entry (text was appended by hand)", total, matched)
    return verdict(None, None, matched)


def _entry_problem(index: int, line: bytes, previous: str) -> tuple[str | None, int | None, dict | None]:
    """(problem, the earliest entry it puts in doubt, the parsed entry). An entry whose own hash is wrong was
    altered itself; a wrong seq or prev also doubts the entry before it (it may have been rewritten with its
    hash, or one was added or removed between the two)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return f"entry {index}: not valid JSON", index, None
    if not isinstance(entry, dict) or set(entry) != FIELDS or not isinstance(entry["objects"], dict) \
            or not all(isinstance(entry[k], str) for k in ("time", "actor", "action", "prev", "hash")) \
            or not isinstance(entry["seq"], int) or isinstance(entry["seq"], bool):
        return f"entry {index}: not a well-formed entry (fields {', '.join(sorted(FIELDS))})", index, None
    if entry["hash"] != entry_hash(entry):
        return f"entry {index}: hash does not match its content", index, entry
    if entry["seq"] != index:
        return (f"entry {index}: seq is {entry['seq']}, expected {index} (an entry before it was removed or added, "
                f"or entries were reordered)"), max(index - 1, 0), entry
    if entry["prev"] != previous:
        return (f"entry {index}: prev does not match entry {index - 1}" if index else
                "entry 0: prev is not 64 zeros (entries before it were removed)"), max(index - 1, 0), entry
    return None, None, entry
