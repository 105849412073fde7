"""The audit log: every kind of tampering is found and the first bad entry named; appends from many processes
neither lose nor fork entries; a process killed while appending leaves a log that verifies.

The mutation test builds a log of a few hundred entries with checkpoints every 64 entries and one at its end,
then applies 1,000 seeded random mutations (edits with and without the entry's hash recomputed, with the log
re-chained after them, deletions, forged insertions, swaps, truncations, duplicates); ``verify`` must fail for
every one and doubt an entry at or before the mutated position.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.security.audit import (CHECKPOINT_EVERY, GENESIS, AuditLog, Checkpoint, Scan, canonical,
                                    check_objects, checkpoint_mac, entry_hash, verify)

KEY = bytes(range(32))
LOG = "host:/home/audit.jsonl"
ENTRIES = 300
MUTATIONS = 1000
SRC = Path(__file__).resolve().parents[2] / "src"


def build(path: Path, n: int = ENTRIES) -> tuple[list[dict], list[Checkpoint]]:
    log = AuditLog(path)
    entries = [log.append(random.Random(i).choice(["train.start", "models.promote", "keys.create"]), f"local:u{i % 3}",
                          {"run": f"run{i:04d}", "data_hash": f"{i:064x}", "version": i % 7})
               for i in range(n)]
    lengths = [*range(CHECKPOINT_EVERY, n, CHECKPOINT_EVERY), n]
    checkpoints = [sign(number, length, entries[length - 1]["hash"]) for number, length in enumerate(lengths, 1)]
    return entries, checkpoints


def sign(number: int, length: int, head: str, key: bytes = KEY) -> Checkpoint:
    signed = f"2026-01-01T00:00:{number:02d}+00:00"
    return Checkpoint(number, length, head, signed, checkpoint_mac(key, LOG, length, head, signed))


def serialize(entries: list[dict]) -> bytes:
    return b"".join(canonical(e) + b"\n" for e in entries)


def check(data: bytes, checkpoints: list[Checkpoint]):
    return verify(Scan.parse(data), KEY, LOG, checkpoints)


def rehash(entry: dict) -> dict:
    entry["hash"] = entry_hash(entry)
    return entry


def rechain(entries: list[dict], start: int) -> None:
    """What a forger without the key does: renumber and re-hash everything from ``start`` on."""
    for index in range(start, len(entries)):
        entries[index]["seq"] = index
        entries[index]["prev"] = entries[index - 1]["hash"] if index else GENESIS
        rehash(entries[index])


def edit(entry: dict, rng: random.Random, fields=("actor", "action", "time", "objects", "seq", "prev", "hash")) -> None:
    field = rng.choice(fields)
    if field == "objects":
        entry["objects"] = {**entry["objects"], rng.choice(["run", "alias", "version"]): f"forged{rng.random()}"}
    elif field == "seq":
        entry["seq"] += rng.choice([-2, -1, 1, 5])
    elif field in ("prev", "hash"):
        entry[field] = f"{rng.getrandbits(256):064x}"
    elif field == "time":
        entry["time"] = "2020-01-01T00:00:00.000000+00:00"
    else:
        entry[field] = f"{entry[field]}.forged"


def mutate(entries: list[dict], rng: random.Random) -> tuple[str, bytes, int | None, int | None]:
    """A random mutation: (its name, the log's new bytes, the mutated position, the exact entry to name or None)."""
    e = [dict(entry, objects=dict(entry["objects"])) for entry in entries]  # a copy (objects hold no lists)
    n = len(e)
    kind = rng.choice(["edit", "edit_rehash", "edit_rechain", "delete", "delete_rechain", "insert_garbage",
                       "insert_chained", "insert_rechain", "swap", "swap_rechain", "truncate", "truncate_torn",
                       "duplicate", "duplicate_rechain"])
    p = rng.randrange(n)
    exact = None
    if kind == "edit":
        edit(e[p], rng)
        exact = p  # its own hash no longer matches
    elif kind == "edit_rehash":
        edit(e[p], rng, fields=("actor", "action", "time", "objects"))
        rehash(e[p])
    elif kind == "edit_rechain":
        edit(e[p], rng, fields=("actor", "action", "time", "objects"))
        rechain(e, p)
    elif kind in ("delete", "delete_rechain"):
        del e[p]
        if kind == "delete_rechain":
            rechain(e, p)
    elif kind.startswith("insert"):
        forged = {"seq": p, "time": "2026-01-01T00:00:00+00:00", "actor": "local:mallory", "action": "keys.create",
                  "objects": {"key": "abcdef012345"}, "prev": e[p - 1]["hash"] if p else GENESIS}
        if kind == "insert_garbage":
            forged["seq"], forged["prev"] = rng.randrange(n), f"{rng.getrandbits(256):064x}"
        e.insert(p, rehash(forged))
        if kind == "insert_rechain":
            rechain(e, p)
    elif kind.startswith("swap"):
        p, q = sorted(rng.sample(range(n), 2))
        e[p], e[q] = e[q], e[p]
        if kind == "swap_rechain":
            rechain(e, p)
    elif kind.startswith("truncate"):
        p = rng.randrange(n)  # keep entries 0 .. p - 1
        data = serialize(e[:p])
        if kind == "truncate_torn":
            data += canonical(e[p])[:rng.randrange(1, 40)]
        return kind, data, p, None
    else:
        if kind == "duplicate_rechain":  # a copy re-chained onto the very end is an append: see the README
            p = rng.randrange(n - 1)
        e.insert(p + 1, copy.deepcopy(e[p]))
        p += 1
        if kind == "duplicate_rechain":
            rechain(e, p)
    return kind, serialize(e), p, exact


def test_a_clean_log_verifies_with_every_checkpoint(tmp_path):
    path = tmp_path / "audit.jsonl"
    entries, checkpoints = build(path)
    verdict = verify(AuditLog(path).scan(), KEY, LOG, checkpoints)
    assert verdict.ok and verdict.entries == ENTRIES and verdict.checkpoints == len(checkpoints)
    assert verdict.head == entries[-1]["hash"] and verdict.summary().startswith(f"ok: {ENTRIES} entries")
    assert path.read_bytes() == serialize(entries)  # the file is exactly the canonical lines
    assert [e["seq"] for e in entries] == list(range(ENTRIES))
    assert entries[0]["prev"] == GENESIS and all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_thousand_random_mutations_are_each_found_at_or_before_the_change(tmp_path):
    entries, checkpoints = build(tmp_path / "audit.jsonl")
    rng = random.Random(20260101)
    seen = {}
    for trial in range(MUTATIONS):
        kind, data, position, exact = mutate(entries, rng)
        verdict = check(data, checkpoints)
        context = f"trial {trial}: {kind} at {position}: {verdict.summary()}"
        assert not verdict.ok, context
        assert verdict.problem and verdict.first_bad is not None, context
        assert verdict.first_bad <= position, context
        if exact is not None:
            assert verdict.first_bad == exact and verdict.problem.startswith(f"entry {exact}: hash"), context
        seen[kind] = seen.get(kind, 0) + 1
    assert len(seen) == 14 and min(seen.values()) > 30, seen


@pytest.mark.parametrize("change, message", [
    (lambda e: e[17].update(actor="local:mallory"), "entry 17: hash does not match its content"),
    (lambda e: (e[17].update(actor="local:mallory"), rehash(e[17])), "entry 18: prev does not match entry 17"),
    (lambda e: e.__delitem__(17), "entry 17: seq is 18, expected 17"),
    (lambda e: (e.__delitem__(17), rechain(e, 17)), "entry 63 does not hash to the head of checkpoint 1"),
    (lambda e: e.__delitem__(slice(290, None)), "log has 290 entries but checkpoint 5 (signed "),
    (lambda e: (e.__delitem__(0), rechain(e, 0)), "entry 63 does not hash to the head of checkpoint 1"),
])
def test_messages_name_the_first_bad_entry(tmp_path, change, message):
    entries, checkpoints = build(tmp_path / "audit.jsonl")
    change(entries)
    verdict = check(serialize(entries), checkpoints)
    assert not verdict.ok and verdict.problem.startswith(message), verdict.problem
    if "covers" in message:
        assert verdict.problem.endswith(f"covers {ENTRIES}: the tail was truncated")


def test_a_forged_checkpoint_or_one_under_another_key_is_refused(tmp_path):
    entries, checkpoints = build(tmp_path / "audit.jsonl")
    entries[100]["objects"]["run"] = "forged"
    rechain(entries, 100)
    forged = [c for c in checkpoints if c.length <= 100]
    forged += [sign(c.number, c.length, entries[c.length - 1]["hash"], key=b"x" * 32) for c in checkpoints
               if c.length > 100]
    verdict = check(serialize(entries), forged)
    assert not verdict.ok and verdict.problem.startswith("checkpoint 2 signature is invalid")
    altered = [*checkpoints[:-1], Checkpoint(99, ENTRIES - 10, entries[ENTRIES - 11]["hash"], checkpoints[-1].signed,
                                             checkpoints[-1].mac)]
    assert check(serialize(entries), altered).problem.startswith("checkpoint 99 signature is invalid")


def test_without_checkpoints_only_the_chain_is_checked_and_a_re_chained_log_passes(tmp_path):
    """What checkpoints are for: with none, a rewritten and re-chained log cannot be told from a true one."""
    entries, _ = build(tmp_path / "audit.jsonl", 50)
    entries[10]["actor"] = "local:mallory"
    rechain(entries, 10)
    assert check(serialize(entries), []).ok


def test_an_unfinished_last_line_is_reported_and_the_next_append_cuts_it_off(tmp_path):
    path = tmp_path / "audit.jsonl"
    _, checkpoints = build(path, 70)
    torn = canonical({"action": "keys.create", "actor": "local:u1", "hash": "0" * 64})[:37]
    with open(path, "ab") as f:
        f.write(torn)
    verdict = verify(AuditLog(path).scan(), KEY, LOG, checkpoints)
    assert verdict.ok and verdict.unfinished == len(torn) and verdict.entries == 70
    assert "incomplete last entry" in verdict.summary()
    log = AuditLog(path)
    entry = log.append("keys.revoke", "local:u1", {"key": "abcdef012345"})
    assert log.repaired["action"] == "audit.repair" and log.repaired["seq"] == 70 and entry["seq"] == 71
    assert log.repaired["objects"]["bytes"] == len(torn) and entry["prev"] == log.repaired["hash"]
    verdict = verify(AuditLog(path).scan(), KEY, LOG, checkpoints)
    assert verdict.ok and not verdict.unfinished and verdict.entries == 72
    with open(path, "ab") as f:
        f.write(torn[:5])
    assert AuditLog(path).repair("local:u1") == 5 and AuditLog(path).repair("local:u1") == 0
    assert verify(AuditLog(path).scan(), KEY, LOG, checkpoints).entries == 73


def test_text_appended_by_hand_is_tampering_and_no_entry_is_chained_onto_it(tmp_path):
    path = tmp_path / "audit.jsonl"
    _, checkpoints = build(path, 10)
    with open(path, "ab") as f:
        f.write(b"nothing to see here")
    verdict = verify(AuditLog(path).scan(), KEY, LOG, checkpoints)
    assert not verdict.ok and "no unfinished entry" in verdict.problem
    with pytest.raises(TunelabError, match="no unfinished entry"):
        AuditLog(path).append("keys.create", "local:u1")
    with open(path, "ab") as f:
        f.write(b"\n")
    with pytest.raises(TunelabError, match="last entry .* is unreadable"):
        AuditLog(path).append("keys.create", "local:u1")


def test_objects_are_ids_a_long_or_multi_line_value_is_kept_only_as_its_hash():
    kept = check_objects({"run": "abc123", "skip": None, "arms": ("a", "b"), "prompt": "tell me\nabout it",
                          "row": "x" * 400, "n": 3, "forced": True})
    assert kept["run"] == "abc123" and "skip" not in kept and kept["arms"] == ["a", "b"]
    assert kept["prompt"].startswith("sha256:") and kept["row"].startswith("sha256:") and len(kept["row"]) == 71
    with pytest.raises(TunelabError, match="no id"):
        check_objects({"score": 0.5})


def test_an_entry_too_large_to_be_ids_is_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(TunelabError, match="over 16384 bytes"):
        log.append("eval", "local:u1", {"evaluations": list(range(5000))})
    assert not log.path.read_bytes()


APPENDER = """
import os, sys
sys.path.insert(0, {src!r})
from tunelab.security.audit import AuditLog
log, worker = AuditLog(sys.argv[1]), int(sys.argv[2])
count = int(sys.argv[3])
i = 0
while count < 0 or i < count:
    log.append("test.append", f"local:worker{{worker}}", {{"worker": worker, "n": i}})
    i += 1
"""


def appender(path: Path, worker: int, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", APPENDER.format(src=str(SRC)), str(path), str(worker), str(count)])


def test_concurrent_appends_from_several_processes_lose_and_fork_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    workers, each = 4, 60
    processes = [appender(path, w, each) for w in range(workers)]
    assert [p.wait(timeout=120) for p in processes] == [0] * workers
    verdict = verify(AuditLog(path).scan(), KEY, LOG, [])
    assert verdict.ok and verdict.entries == workers * each and not verdict.unfinished
    entries = AuditLog(path).entries()
    assert sorted((e["objects"]["worker"], e["objects"]["n"]) for e in entries) == \
        [(w, n) for w in range(workers) for n in range(each)]
    for w in range(workers):  # each process's own entries are in the order it wrote them
        assert [e["objects"]["n"] for e in entries if e["objects"]["worker"] == w] == list(range(each))


def test_sigkill_while_appending_leaves_a_log_that_verifies_and_the_next_append_goes_on(tmp_path):
    path = tmp_path / "audit.jsonl"
    rng = random.Random(7)
    total = 0
    for round_ in range(6):
        before = path.stat().st_size if path.exists() else 0
        process = appender(path, round_, -1)
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < before + 2_000) and time.monotonic() < deadline:
            time.sleep(0.01)  # the child has started appending
        time.sleep(rng.uniform(0.0, 0.2))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        verdict = verify(AuditLog(path).scan(), KEY, LOG, [])
        assert verdict.ok, verdict.problem  # at worst an unfinished last line: reported, not tampering
        assert verdict.entries > total
        entry = AuditLog(path).append("test.after_kill", "local:test", {"round": round_})
        verdict = verify(AuditLog(path).scan(), KEY, LOG, [])
        assert verdict.ok and not verdict.unfinished and verdict.head == entry["hash"]
        total = verdict.entries
    kills = [e for e in AuditLog(path).entries() if e["action"] == "test.after_kill"]
    assert [e["objects"]["round"] for e in kills] == list(range(6))


def test_a_failed_write_leaves_no_half_entry(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("keys.create", "local:u1", {"key": "a"})
    real_write, inode = os.write, path.stat().st_ino

    def half_then_fail(fd, data):
        if os.fstat(fd).st_ino == inode:
            real_write(fd, bytes(data[:20]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OSError):
        log.append("keys.create", "local:u1", {"key": "b"})
    monkeypatch.undo()
    assert path.read_bytes().endswith(b"\n") and len(AuditLog(path).entries()) == 1
    assert json.loads(path.read_bytes().splitlines()[-1])["objects"] == {"key": "a"}
