"""Local secrets (the API-key pepper, the user-hash salt, the audit and checkpoint keys): 32 random bytes made on
first use in ``$TUNELAB_HOME``, owner-only, and sealed under the master key when one is set at that moment, so a
copied disk without the master key yields no key to forge a signature or test a guess against a hash with. One
made before a key was set stays a plaintext 0600 file: sealing it on some later read would lock out every
command run without the key (an API key check, a resume) for good.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home
from tunelab.security.files import read_bytes, seal


def local_secret(filename: str, variable: str | None = None) -> bytes:
    """``$variable`` if set, else the file ``$TUNELAB_HOME/filename`` (64 hex characters, made on first use),
    refused when other users can read it."""
    configured = os.environ.get(variable) if variable else None
    if configured:
        return configured.encode()
    path = tunelab_home() / filename
    if not path.exists():
        create_once(path, seal(secrets.token_hex(32).encode()))
    check_private(path)
    return read_bytes(path).decode("utf-8").strip().encode()


def create_once(path: Path, data: bytes) -> None:
    """Write ``path`` (mode 0600) unless it exists; of two processes creating it at once, the first to finish
    wins and the other reads the winner's, so nothing is ever signed or hashed under a secret that is lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails when another process made it first
    except FileExistsError:
        pass
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_private(path: Path) -> None:
    """Refuse a secret file that other users can read: a readable secret makes its hashes guessable."""
    if path.stat().st_mode & 0o077:
        raise TunelabError(f"{path} can be read by other users; run: chmod 600 {path}")
