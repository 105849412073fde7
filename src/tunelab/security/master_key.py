"""Where the master key comes from, and the keyring a rotation in progress widens.

The key is 32 bytes written as 64 hex characters (or urlsafe base64), taken from the first of:
``$TUNELAB_KEY``; the file ``$TUNELAB_KEY_FILE``; the file ``$TUNELAB_HOME/master.key``. A key file must be
owner-only (mode 0600). With no key anywhere, tunelab writes plaintext as before. The key is never logged,
never written into configs or the registry; files name it only by its id (8 bytes of a hash of it).

While ``tunelab keys rotate`` runs (and after a crash in the middle of one), ``$TUNELAB_HOME/key_rotation.json``
names the new key's file, and every process reads with both keys, so each file opens under one or the other.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home
from tunelab.security.crypto import Keyring, MasterKey

KEY_VARIABLE = "TUNELAB_KEY"
KEY_FILE_VARIABLE = "TUNELAB_KEY_FILE"
HOME_KEY_FILE = "master.key"
ROTATION_JOURNAL = "key_rotation.json"


def parse_key(text: str, source: str) -> MasterKey:
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise TunelabError(f"{source} is not a master key: expected 32 bytes as 64 hex characters "
                           "(make one with: tunelab keys generate-master)")
    return MasterKey(raw)


def read_key_file(path: str | Path) -> MasterKey:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TunelabError(f"key file {path} does not exist")
    if path.stat().st_mode & 0o077:
        raise TunelabError(f"key file {path} can be read by other users; run: chmod 600 {path}")
    return parse_key(path.read_text(encoding="utf-8"), f"key file {path}")


def key_source() -> tuple[str, Path | None] | None:
    """Where the current key comes from: ("env", None), ("file", path), or None when encryption is off."""
    if os.environ.get(KEY_VARIABLE):
        return "env", None
    if os.environ.get(KEY_FILE_VARIABLE):
        return "file", Path(os.environ[KEY_FILE_VARIABLE]).expanduser()
    home_key = tunelab_home() / HOME_KEY_FILE
    return ("file", home_key) if home_key.exists() else None


def current_key() -> MasterKey | None:
    source = key_source()
    if source is None:
        return None
    if source[0] == "env":
        return parse_key(os.environ[KEY_VARIABLE], f"${KEY_VARIABLE}")
    return read_key_file(source[1])


def keyring() -> Keyring | None:
    """The keys this process encrypts and decrypts with, or None when no master key is set."""
    current = current_key()
    rotation = rotation_state()
    if rotation is None:
        return Keyring(current) if current is not None else None
    if not Path(rotation["new_key_file"]).exists() and current is not None and current.key_id.hex() == rotation["to"]:
        return Keyring(current)  # the new key file became the home key file just before the journal went
    new = read_key_file(rotation["new_key_file"])
    if current is None:
        return Keyring(new)
    return Keyring(current, (new,)) if new.key_id != current.key_id else Keyring(current)


def rotation_state() -> dict | None:
    path = tunelab_home() / ROTATION_JOURNAL
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_key_file(path: str | Path, key: MasterKey | None = None) -> MasterKey:
    """Write a (new, random) key to ``path``, owner-only, refusing to overwrite a key that exists."""
    path = Path(path).expanduser()
    key = key or MasterKey(secrets.token_bytes(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TunelabError(f"{path} already exists; a key file is never overwritten") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key.secret.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key
