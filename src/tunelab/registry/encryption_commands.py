"""``tunelab keys generate-master`` and ``tunelab keys rotate``: the master key's life, from the CLI.

Rotation re-wraps every encrypted file tunelab knows of (``$TUNELAB_HOME``, each recorded run folder, dataset
version and registered model, and any ``--path`` given) and every sealed registry value; see
``security/rotation.py`` for why a crash in the middle loses nothing.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from tunelab.paths import tunelab_home
from tunelab.registry.audit_trail import record
from tunelab.registry.db import open_registry
from tunelab.registry.schema import Base, DatasetVersion, ModelVersion, Run
from tunelab.registry.sealed import rewrap_sealed
from tunelab.security.master_key import HOME_KEY_FILE, key_source, write_key_file
from tunelab.security.rotation import rotate


def keys_generate_master(out: str | None) -> Path:
    """Write a new random master key (owner-only) and say how to use it; the key itself is never printed."""
    path = Path(out).expanduser() if out else tunelab_home() / HOME_KEY_FILE
    key = write_key_file(path)
    record("keys.generate_master", master_key=key.key_id.hex(), file=str(path))
    use = ("tunelab finds it there: from now on, what tunelab writes from user data is encrypted"
           if path == tunelab_home() / HOME_KEY_FILE else f"use it with: export TUNELAB_KEY_FILE={path}")
    print(f"wrote master key {key.key_id.hex()} to {path} (mode 0600); {use}. Keep a copy in a secret store: "
          "without it, encrypted files cannot be read.")
    return path


def known_folders(registry) -> list[Path]:
    """Folders that may hold encrypted files: the home folder and every path the registry records."""
    folders = [tunelab_home()]
    with registry.session() as session:
        for column in (Run.path, DatasetVersion.path, ModelVersion.artifact_path):
            folders += [Path(p) for p in session.scalars(select(column)) if p]
    return [p if p.is_dir() else p.parent for p in folders]


def keys_rotate(url: str | None, new_key_file: str | None, paths: list[str]) -> None:
    registry = open_registry(url)
    folders = known_folders(registry) + [Path(p) for p in paths]

    def rewrap_fields(ring, new) -> int:
        with registry.session() as session:
            return rewrap_sealed(session, Base.metadata, ring, new)

    source = key_source()
    result = rotate(folders, new_key_file, rewrap_fields)
    record("keys.rotate", registry=registry, checkpoint=True, from_key=result.old, to_key=result.new,
           files=result.files, fields=result.fields)
    print(f"re-wrapped {result.files} file(s) and {result.fields} registry value(s) from key {result.old} to "
          f"{result.new} ({result.unchanged} already under the new key); no data was re-encrypted.")
    if result.key_file is not None:
        print(f"{result.key_file} now holds the new key.")
    elif source is not None and source[0] == "env":
        print("set TUNELAB_KEY to the new key now (the old one no longer opens these files).")
    else:
        print("point TUNELAB_KEY_FILE at the new key file now (the old one no longer opens these files).")
