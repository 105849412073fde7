"""``tunelab keys rotate``: every data key re-wrapped under a new master key, the data never re-encrypted.

1. The new key is fixed first: ``--new-key-file``, or ``$TUNELAB_HOME/master.key.next`` made next to the home
   key file. A journal (``key_rotation.json``, no secrets in it) names it, so from then on every tunelab process
   reads with both keys.
2. Each encrypted file under the given folders gets its key slot rewritten in place (``crypto.rewrap_file``:
   new slot flushed before the old one is cleared), then the registry's sealed fields (one transaction).
3. The home key file is replaced by the new one (an atomic rename), then the journal is removed.

A ``kill -9`` anywhere leaves each file readable under the old or the new key, and running the command again
finishes the same rotation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json
from tunelab.paths import tunelab_home
from tunelab.security.crypto import Keyring, MasterKey, is_encrypted_file, rewrap_file
from tunelab.security.master_key import (HOME_KEY_FILE, ROTATION_JOURNAL, current_key, key_source, read_key_file,
                                         rotation_state, write_key_file)

NEXT_KEY_FILE = "master.key.next"


@dataclass
class Rotation:
    old: str
    new: str
    files: int
    unchanged: int
    fields: int
    key_file: Path | None  # where the new key now is when tunelab keeps it; None when the user holds it


def rotate(folders: Iterable[str | Path], new_key_file: str | Path | None = None,
           rewrap_fields: Callable[[Keyring, MasterKey], int] | None = None) -> Rotation:
    old = current_key()
    if old is None:
        raise TunelabError("no master key is set (TUNELAB_KEY, TUNELAB_KEY_FILE or $TUNELAB_HOME/master.key): "
                           "nothing is encrypted, so there is nothing to rotate")
    new, new_path = _new_key(new_key_file)
    ring = Keyring(old, (new,)) if new.key_id != old.key_id else Keyring(new)
    files = unchanged = 0
    for path in tqdm(list(encrypted_files(folders)), desc="re-wrapping", unit="file", leave=False):
        if rewrap_file(path, ring, new):
            files += 1
        else:
            unchanged += 1
    fields = rewrap_fields(ring, new) if rewrap_fields is not None else 0
    source = key_source()
    home_key = tunelab_home() / HOME_KEY_FILE
    kept = None
    if source == ("file", home_key) and new_path == tunelab_home() / NEXT_KEY_FILE:
        os.replace(new_path, home_key)
        kept = home_key
    (tunelab_home() / ROTATION_JOURNAL).unlink(missing_ok=True)
    return Rotation(old.key_id.hex(), new.key_id.hex(), files, unchanged, fields, kept)


def _new_key(new_key_file: str | Path | None) -> tuple[MasterKey, Path]:
    """The rotation's new key: the one a journal names (a rotation cut short), the one given, or a new one made
    next to the home key file; the journal is written before any file changes."""
    journal = rotation_state()
    if journal is not None:
        path = Path(journal["new_key_file"])
        if not path.exists() and current_key().key_id.hex() == journal["to"]:
            return current_key(), tunelab_home() / HOME_KEY_FILE  # cut short after the new key took over
        if new_key_file is not None and Path(new_key_file).expanduser().resolve() != path:
            raise TunelabError(f"a rotation to {path} was cut short; run tunelab keys rotate without "
                               "--new-key-file (or with that file) to finish it first")
        return read_key_file(path), path
    if new_key_file is not None:
        path = Path(new_key_file).expanduser().resolve()
        key = read_key_file(path)
    elif key_source() == ("file", tunelab_home() / HOME_KEY_FILE):
        path = tunelab_home() / NEXT_KEY_FILE
        key = read_key_file(path) if path.exists() else write_key_file(path)
    else:
        raise TunelabError("the master key comes from $TUNELAB_KEY or $TUNELAB_KEY_FILE: make the new key with "
                           "tunelab keys generate-master --out FILE, then run tunelab keys rotate --new-key-file "
                           "FILE")
    atomic_write_json(tunelab_home() / ROTATION_JOURNAL,
                      {"from": current_key().key_id.hex(), "to": key.key_id.hex(), "new_key_file": str(path),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return key, path


# SQLite databases are never encrypted files, and must not even be opened: closing any descriptor of a database
# file drops every POSIX lock this process holds on it, under the registry connection it has open.
DATABASE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite", ".sqlite3")


def encrypted_files(folders: Iterable[str | Path]) -> Iterable[Path]:
    """Every encrypted regular file under ``folders`` (symbolic links are not followed), each once."""
    seen = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for root, _, names in os.walk(folder):
            for name in names:
                path = Path(root) / name
                if name.endswith(DATABASE_SUFFIXES) or path.is_symlink() or not path.is_file():
                    continue
                identity = path.resolve()
                if identity not in seen and is_encrypted_file(path):
                    seen.add(identity)
                    yield path
