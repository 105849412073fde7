"""Encrypted files: every way of damaging one is caught with a one-line error, and a key rotation killed at any
point leaves every file readable under the old or the new key."""

from __future__ import annotations

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
from tunelab.security import files
from tunelab.security.crypto import (HEADER_SIZE, SEGMENT, TAG, DecryptError, Keyring, MasterKey, decrypt, encrypt,
                                     rewrap_blob)

SEALED = SEGMENT + TAG


@pytest.fixture
def key() -> MasterKey:
    return MasterKey(os.urandom(32))


def segments(blob: bytes) -> list[bytes]:
    body = blob[HEADER_SIZE:]
    return [body[i:i + SEALED] for i in range(0, len(body), SEALED)]


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 17])
def test_round_trip_at_every_segment_boundary(key, size):
    data = os.urandom(size)
    blob = encrypt(data, key)
    assert decrypt(blob, Keyring(key)) == data
    assert len(blob) == HEADER_SIZE + size + TAG * max(1, -(-size // SEGMENT))


def test_ciphertext_reveals_nothing_and_differs_each_time(key):
    data = b"the same secret sentence " * 100
    a, b = encrypt(data, key), encrypt(data, key)
    assert a != b and b"secret" not in a


def tampered(blob: bytes, other: bytes, rng: random.Random) -> dict[str, bytes]:
    parts = segments(blob)
    head, body = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    flip = rng.randrange(len(blob))
    return {
        "bit flipped": blob[:flip] + bytes([blob[flip] ^ (1 << rng.randrange(8))]) + blob[flip + 1:],
        "segments reordered": head + parts[1] + parts[0] + b"".join(parts[2:]),
        "segment repeated": head + parts[0] + b"".join(parts),
        "segment dropped": head + b"".join(parts[:1] + parts[2:]),
        "last segment dropped": head + b"".join(parts[:-1]),
        "truncated inside a segment": blob[:HEADER_SIZE + SEALED + rng.randrange(1, SEALED)],
        "truncated to the header": head,
        "appended after the end": blob + b"\x00",
        "a whole segment appended": blob + parts[0],
        "header from another file": other[:HEADER_SIZE] + body,
        "key slot from another file": blob[:35] + other[35:HEADER_SIZE] + body,
        "body from another file": head + other[HEADER_SIZE:],
        "empty": b"",
    }


def test_every_kind_of_damage_is_detected(key):
    rng = random.Random(7)
    data = os.urandom(3 * SEGMENT + 1000)
    blob, other = encrypt(data, key), encrypt(data, key)
    for trial in range(20):
        for name, bad in tampered(blob, other, rng).items():
            with pytest.raises(DecryptError) as caught:
                decrypt(bad, Keyring(key), "f.jsonl")
            message = str(caught.value)
            assert message.startswith("f.jsonl") and "\n" not in message, (name, message)


def test_wrong_key_is_one_clear_line(key):
    blob = encrypt(b"rows", key)
    with pytest.raises(DecryptError, match="sealed under master key .* but the key given is"):
        decrypt(blob, Keyring(MasterKey(os.urandom(32))))


def test_rewrap_keeps_the_data_and_drops_the_old_key(key):
    data = os.urandom(2 * SEGMENT + 5)
    blob = encrypt(data, key)
    new = MasterKey(os.urandom(32))
    rewrapped = rewrap_blob(blob, Keyring(key, (new,)), new)
    assert rewrapped[HEADER_SIZE:] == blob[HEADER_SIZE:]  # the data is not re-encrypted
    assert decrypt(rewrapped, Keyring(new)) == data
    with pytest.raises(DecryptError):
        decrypt(rewrapped, Keyring(key))
    assert rewrap_blob(rewrapped, Keyring(new), new) is None


def test_files_read_plaintext_and_encrypted_and_refuse_without_key(tmp_path, monkeypatch, key):
    files.write_jsonl(tmp_path / "plain.jsonl", [{"a": 1}])
    assert (tmp_path / "plain.jsonl").read_text() == '{"a": 1}\n'
    monkeypatch.setenv("TUNELAB_KEY", key.secret.hex())
    rows = [{"text": "row %d" % i} for i in range(5000)]
    files.write_jsonl(tmp_path / "sealed.jsonl", rows)
    assert b"row 1" not in (tmp_path / "sealed.jsonl").read_bytes()
    assert files.read_jsonl(tmp_path / "sealed.jsonl") == rows
    assert files.read_jsonl(tmp_path / "plain.jsonl") == [{"a": 1}]
    monkeypatch.delenv("TUNELAB_KEY")
    with pytest.raises(TunelabError, match="is encrypted; set TUNELAB_KEY"):
        files.read_jsonl(tmp_path / "sealed.jsonl")


def test_a_key_file_readable_by_others_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "k"
    path.write_text(os.urandom(32).hex())
    path.chmod(0o644)
    monkeypatch.setenv("TUNELAB_KEY_FILE", str(path))
    with pytest.raises(TunelabError, match="chmod 600"):
        files.write_text(tmp_path / "x", "y")


def test_a_bad_key_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_KEY", "hunter2")
    with pytest.raises(TunelabError, match="not a master key"):
        files.write_text(tmp_path / "x", "y")


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def readable_with(path: Path, env: dict) -> bool:
    probe = ("import sys\nfrom tunelab.security import files\n"
             "for p in sys.argv[1:]: files.read_bytes(p)\n")
    return subprocess.run([sys.executable, "-c", probe, str(path)], env=env, capture_output=True).returncode == 0


def rewrapped(folder: Path, home: Path) -> int:
    """How many files of ``folder`` have a key slot for the rotation's new key."""
    try:
        new = bytes.fromhex(json.loads((home / "key_rotation.json").read_text())["to"])
    except (OSError, ValueError, KeyError):
        return 0
    return sum(new in path.read_bytes()[:HEADER_SIZE] for path in folder.iterdir())


def test_rotation_killed_at_random_points_loses_nothing(tmp_path, monkeypatch):
    """SIGKILL ``keys rotate`` at several moments; after each kill every file opens (under the old or the new
    key), re-running finishes, and at the end only the new key opens them."""
    home = tmp_path / "home"
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    assert run_cli("keys", "generate-master", env=env).returncode == 0
    data = tmp_path / "data"
    script = ("import os, sys\nfrom tunelab.security import files\n"
              "for i in range(int(sys.argv[2])):\n"
              "    files.write_bytes(os.path.join(sys.argv[1], f'f{i:04d}.bin'), (b'%d ' % i) * 300)\n")
    count = 150
    subprocess.run([sys.executable, "-c", script, str(data), str(count)], env=env, check=True)
    contents = {f"f{i:04d}.bin": (b"%d " % i) * 300 for i in range(count)}
    old_key = (home / "master.key").read_text()
    rng = random.Random(3)
    mixed_seen = False
    for attempt in range(6):
        process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "keys", "rotate", "--path", str(data)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = rng.randint(1, count - 1)  # kill once this many files hold the new key, so it lands mid-way
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if (home / "key_rotation.json").exists() and rewrapped(data, home) >= target:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        check = ("import sys, pathlib\nfrom tunelab.security import files\n"
                 "from tunelab.security.crypto import Header, HEADER_SIZE, SLOT, EMPTY_SLOT\n"
                 "ids = set()\n"
                 "for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
                 "    assert files.read_bytes(p) == (b'%d ' % int(p.name[1:5])) * 300, p\n"
                 "    h = Header.parse(p.read_bytes()[:HEADER_SIZE], str(p))\n"
                 "    ids.add(frozenset(SLOT.unpack(s)[0] for s in h.slots if s != EMPTY_SLOT))\n"
                 "print(len(ids))\n")
        result = subprocess.run([sys.executable, "-c", check, str(data)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        mixed_seen |= int(result.stdout.strip()) > 1
        if mixed_seen:
            break
    assert mixed_seen, "no kill landed in the middle of a rotation; the test proved nothing"
    finished = run_cli("keys", "rotate", "--path", str(data), env=env)
    assert finished.returncode == 0, finished.stderr
    assert not (home / "key_rotation.json").exists() and not (home / "master.key.next").exists()
    assert (home / "master.key").read_text() != old_key
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    for name, content in contents.items():
        assert files.read_bytes(data / name) == content
    old_env = {**env, "TUNELAB_KEY": old_key.strip()}
    assert not readable_with(data / "f0000.bin", old_env)
    assert readable_with(data / "f0000.bin", env)


def test_local_secrets_are_sealed_when_made_with_a_master_key(monkeypatch):
    from tunelab.paths import tunelab_home
    from tunelab.security.crypto import is_encrypted_file
    from tunelab.security.secrets import local_secret

    before = local_secret("audit_key")
    path = tunelab_home() / "audit_key"
    assert not is_encrypted_file(path) and (path.stat().st_mode & 0o777) == 0o600
    monkeypatch.setenv("TUNELAB_KEY", os.urandom(32).hex())
    assert local_secret("audit_key") == before and not is_encrypted_file(path)  # made before: left as it is
    fresh = local_secret("checkpoint.key")
    sealed_path = tunelab_home() / "checkpoint.key"
    assert is_encrypted_file(sealed_path) and (sealed_path.stat().st_mode & 0o777) == 0o600 and len(fresh) == 64
    assert local_secret("checkpoint.key") == fresh
    monkeypatch.delenv("TUNELAB_KEY")
    with pytest.raises(TunelabError, match="is encrypted"):
        local_secret("checkpoint.key")
