"""API keys: ``tl-<id>-<secret>``, shown once, kept only as an HMAC-SHA256, checked in constant time.

The HMAC's key (the pepper) comes from ``TUNELAB_KEY_PEPPER`` or, by default, the file
``$TUNELAB_HOME/api_key_pepper`` (created with mode 0600 on first use). A stolen registry without the
pepper gives no usable key. Servers that share a PostgreSQL registry must share the pepper too.
The id is the key's public part: it names the key in lists and finds its row without scanning.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home
from tunelab.registry.schema import ApiKey

ROLES = ("admin", "user")  # admin manages adapters, keys and A/B tests; user calls models
PEPPER_VARIABLE = "TUNELAB_KEY_PEPPER"
PEPPER_FILE = "api_key_pepper"
KEY_PATTERN = re.compile(r"^tl-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")


def pepper() -> bytes:
    """The HMAC key: ``$TUNELAB_KEY_PEPPER``, else the pepper file (made on first use, owner-only)."""
    return secret(PEPPER_VARIABLE, PEPPER_FILE)


def secret(variable: str, filename: str) -> bytes:
    """``$variable`` if set, else the file ``$TUNELAB_HOME/filename``: 32 random bytes (hex) made on first use,
    owner-only, refused when others can read it."""
    configured = os.environ.get(variable)
    if configured:
        return configured.encode()
    path = tunelab_home() / filename
    if not path.exists():
        create_once(path, secrets.token_hex(32))
    check_private(path)
    return path.read_text(encoding="utf-8").strip().encode()


def create_once(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) unless it exists; of two processes creating it at once, the first to
    finish wins and the other reads the winner's, so nothing is ever hashed under a secret that is lost
    (the key pepper here, the user salt in serving.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
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


def digest(key: str) -> str:
    return hmac.new(pepper(), key.encode(), hashlib.sha256).hexdigest()


def create_key(session: Session, name: str, role: str = "user") -> tuple[ApiKey, str]:
    """A new key; returns its row and the key itself, which is never stored and cannot be shown again."""
    if role not in ROLES:
        raise TunelabError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if not name.strip():
        raise TunelabError("a key needs a name (who or what uses it)")
    key_id = secrets.token_hex(6)
    key = f"tl-{key_id}-{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, name=name.strip(), role=role, digest=digest(key))
    session.add(row)
    session.flush()
    return row, key


def verify_key(session: Session, presented: str | None) -> ApiKey | None:
    """The live key ``presented`` is, or None (malformed, unknown, revoked or wrong). The comparison takes
    the same time however much of the key is right."""
    match = KEY_PATTERN.match(presented or "")
    if match is None:
        return None
    row = session.get(ApiKey, match.group(1))
    expected = row.digest if row is not None else "0" * 64
    if not hmac.compare_digest(expected, digest(presented)) or row is None or row.revoked is not None:
        return None
    row.last_used = datetime.now(timezone.utc)
    return row


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key_id = key_id.removeprefix("tl-").split("-")[0]
    row = session.get(ApiKey, key_id)
    if row is None:
        raise TunelabError(f"no key {key_id!r} (see tunelab keys list)")
    if row.revoked is None:
        row.revoked = datetime.now(timezone.utc)
    return row


def list_keys(session: Session) -> list[dict]:
    """Every key's id, name, role and dates; never a key or its digest."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created)).all()
    return [{"id": r.id, "name": r.name, "role": r.role, "created": r.created.isoformat(),
             "revoked": r.revoked.isoformat() if r.revoked else None,
             "last_used": r.last_used.isoformat() if r.last_used else None} for r in rows]
