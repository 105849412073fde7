"""Registry columns that hold user content (prompts, answers, feedback, predictions, model cards), encrypted
when a master key is set.

A sealed value is the bytes of an encrypted file (``security.crypto``: its own data key, wrapped by the master
key) in urlsafe base64 after ``tlenc1:``; in a JSON column it is stored as that JSON string. The column's SQL
type does not change, so plaintext rows written before a key was set still read, and no migration is needed.
Everything else (names, ids, hashes, metrics, counts, times) stays plaintext: the registry's queries, reports
and A/B statistics work on those without the key.
"""

from __future__ import annotations

import base64
import json

from sqlalchemy import JSON, Text, select, type_coerce, update
from sqlalchemy.types import TypeDecorator

from tunelab.security.crypto import Keyring, MasterKey, decrypt, encrypt, rewrap_blob
from tunelab.security.files import keyring_for
from tunelab.security.master_key import keyring

PREFIX = "tlenc1:"


def seal_text(text: str) -> str:
    ring = keyring()
    if ring is None:
        return text
    return PREFIX + base64.urlsafe_b64encode(encrypt(text.encode("utf-8"), ring.current)).decode("ascii")


def unseal_text(value: str, where: str) -> str:
    if not value.startswith(PREFIX):
        return value
    blob = base64.urlsafe_b64decode(value[len(PREFIX):])
    return decrypt(blob, keyring_for(where), where).decode("utf-8")


class SealedText(TypeDecorator):
    """Text, encrypted at rest when a master key is set."""

    impl = Text
    cache_ok = True
    raw_type = Text()

    def process_bind_param(self, value, dialect):
        return None if value is None else seal_text(value)

    def process_result_value(self, value, dialect):
        return None if value is None else unseal_text(value, "a sealed registry field")


class SealedJSON(TypeDecorator):
    """A JSON value, encrypted at rest (as one JSON string) when a master key is set."""

    impl = JSON
    cache_ok = True
    raw_type = JSON()

    def process_bind_param(self, value, dialect):
        if value is None or keyring() is None:
            return value
        return seal_text(json.dumps(value, ensure_ascii=False))

    def process_result_value(self, value, dialect):
        if isinstance(value, str) and value.startswith(PREFIX):
            return json.loads(unseal_text(value, "a sealed registry field"))
        return value


def sealed_columns(metadata) -> list:
    """Every (table, column) whose type is sealed."""
    return [(table, column) for table in metadata.sorted_tables for column in table.columns
            if isinstance(column.type, (SealedText, SealedJSON))]


def rewrap_sealed(session, metadata, ring: Keyring, new: MasterKey) -> int:
    """Re-wrap every sealed value's data key under ``new`` (the data itself is not re-encrypted); returns how
    many values changed. Runs in the caller's transaction, so a crash leaves all or none of them changed."""
    changed = 0
    for table, column in sealed_columns(metadata):
        keys = list(table.primary_key.columns)
        raw = type_coerce(column, column.type.raw_type)
        for row in session.execute(select(*keys, raw).where(column.isnot(None))):
            value = row[-1]
            if not (isinstance(value, str) and value.startswith(PREFIX)):
                continue
            where = f"{table.name}.{column.name}"
            blob = rewrap_blob(base64.urlsafe_b64decode(value[len(PREFIX):]), ring, new, where)
            if blob is None:
                continue
            sealed = PREFIX + base64.urlsafe_b64encode(blob).decode("ascii")
            condition = [key == row[i] for i, key in enumerate(keys)]
            value = type_coerce(sealed, column.type.raw_type)
            session.execute(update(table).where(*condition).values({column.name: value}))
            changed += 1
    return changed
