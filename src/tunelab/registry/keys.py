"""API keys: ``tl-<id>-<secret>``, shown once, kept only as an HMAC-SHA256, checked in constant time.

The HMAC's key (the pepper) comes from ``TUNELAB_KEY_PEPPER`` or, by default, the file
``$TUNELAB_HOME/api_key_pepper`` (created with mode 0600 on first use). A stolen registry without the
pepper gives no usable key. Servers that share a PostgreSQL registry must share the pepper too.
The id is the key's public part: it names the key in lists and finds its row without scanning.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.schema import ApiKey
from tunelab.security.secrets import local_secret
from tunelab.security.roles import DEFAULT_ROLE, role_named

PEPPER_VARIABLE = "TUNELAB_KEY_PEPPER"
PEPPER_FILE = "api_key_pepper"
KEY_PATTERN = re.compile(r"^tl-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")


def pepper() -> bytes:
    """The HMAC key: ``$TUNELAB_KEY_PEPPER``, else the pepper file (made on first use, owner-only)."""
    return secret(PEPPER_VARIABLE, PEPPER_FILE)


def secret(variable: str, filename: str) -> bytes:
    """``$variable`` if set, else the file ``$TUNELAB_HOME/filename`` (see ``security.secrets``: made on first
    use, owner-only, sealed under the master key when one is set)."""
    return local_secret(filename, variable)


def digest(key: str) -> str:
    return hmac.new(pepper(), key.encode(), hashlib.sha256).hexdigest()


def create_key(session: Session, name: str, role: str | None = DEFAULT_ROLE) -> tuple[ApiKey, str]:
    """A new key; returns its row and the key itself, which is never stored and cannot be shown again.
    ``role`` None is the default role; the old name ``user`` is stored as ``inference``."""
    role = role_named(DEFAULT_ROLE if role is None else role)
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
        raise NotFoundError(f"no key {key_id!r} (see tunelab keys list)")
    if row.revoked is None:
        row.revoked = datetime.now(timezone.utc)
    return row


def list_keys(session: Session) -> list[dict]:
    """Every key's id, name, role and dates; never a key or its digest."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created)).all()
    return [{"id": r.id, "name": r.name, "role": r.role, "created": r.created.isoformat(),
             "revoked": r.revoked.isoformat() if r.revoked else None,
             "last_used": r.last_used.isoformat() if r.last_used else None} for r in rows]
