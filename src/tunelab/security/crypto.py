"""Encrypted files: envelope keys and AES-256-GCM in 64 KiB segments (a streaming AEAD).

Each file has its own random 32-byte data key. The master key wraps it (AES-256-GCM) into one of two key
slots in the header, so ``tunelab keys rotate`` re-wraps a file by writing one slot in place, never
re-encrypting the data, and a crash between the two slot writes leaves a slot that opens the file.

Layout (big-endian)::

    magic "\\x89TLENC1\\n" (8) | segment size (4) | nonce prefix (7) | salt (16)     <- the file's identity
    slot A: key id (8) | nonce (12) | wrapped data key + tag (48)                    <- 68 bytes, mutable
    slot B: same; all zeros when empty
    segment 0 | segment 1 | ... | last segment                                       <- each ciphertext + 16-byte tag

Segments are encrypted under HKDF(data key, salt) with the nonce ``prefix || counter (4) || last flag (1)`` and
the identity bytes as associated data: the construction of Tink's AES-GCM-HKDF streaming AEAD and age's STREAM.
A flipped bit fails its segment's tag; a dropped, repeated or reordered segment fails the counter; a truncated
file ends on a segment that was not sealed as the last; bytes appended after the last segment make it not the
last; a header (or a key slot) moved over from another file carries another salt and prefix. Each of these, and
a wrong key, raises :class:`DecryptError`: one line, never plaintext that was not written.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tunelab.errors import TunelabError

MAGIC = b"\x89TLENC1\n"
SEGMENT = 64 * 1024
TAG = 16
IDENTITY = struct.Struct(">8sI7s16s")  # magic, segment size, nonce prefix, salt
SLOT = struct.Struct(">8s12s48s")  # key id, nonce, wrapped key + tag
EMPTY_SLOT = bytes(SLOT.size)
HEADER_SIZE = IDENTITY.size + 2 * SLOT.size


class DecryptError(TunelabError):
    """An encrypted file that is damaged, tampered with, or sealed under a key we do not have."""


@dataclass(frozen=True)
class MasterKey:
    """32 secret bytes and their public id. The bytes never appear in repr, logs or files we write."""

    secret: bytes = field(repr=False)

    def __post_init__(self):
        if len(self.secret) != 32:
            raise TunelabError(f"a master key is 32 bytes, not {len(self.secret)}")

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"tunelab master key id\x00" + self.secret).digest()[:8]


@dataclass(frozen=True)
class Keyring:
    """The key new files are sealed under, and every key that may open an existing one (during a rotation,
    the old and the new)."""

    current: MasterKey
    others: tuple[MasterKey, ...] = ()

    def find(self, key_id: bytes) -> MasterKey | None:
        return next((k for k in (self.current, *self.others) if k.key_id == key_id), None)


def is_encrypted(head: bytes) -> bool:
    """Whether bytes that start a file (at least 8 of them) start an encrypted one."""
    return head[:len(MAGIC)] == MAGIC


def is_encrypted_file(path) -> bool:
    try:
        with open(path, "rb") as f:
            return is_encrypted(f.read(len(MAGIC)))
    except (FileNotFoundError, IsADirectoryError):
        return False


# -- header --------------------------------------------------------------------------------------------------

@dataclass
class Header:
    identity: bytes
    slots: list[bytes]

    @property
    def prefix(self) -> bytes:
        return IDENTITY.unpack(self.identity)[2]

    @property
    def salt(self) -> bytes:
        return IDENTITY.unpack(self.identity)[3]

    def to_bytes(self) -> bytes:
        return self.identity + b"".join(self.slots)

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Header:
        if len(raw) < HEADER_SIZE or not is_encrypted(raw):
            raise DecryptError(f"{where}: not a tunelab encrypted file, or its header is cut short")
        identity = raw[:IDENTITY.size]
        if IDENTITY.unpack(identity)[1] != SEGMENT:
            raise DecryptError(f"{where}: unsupported segment size (the header is damaged)")
        slots = [raw[IDENTITY.size + i * SLOT.size: IDENTITY.size + (i + 1) * SLOT.size] for i in range(2)]
        return cls(identity, slots)


def seal_slot(identity: bytes, data_key: bytes, master: MasterKey) -> bytes:
    nonce = os.urandom(12)
    wrapped = AESGCM(master.secret).encrypt(nonce, data_key, identity)
    return SLOT.pack(master.key_id, nonce, wrapped)


def open_slots(header: Header, keyring: Keyring, where: str) -> bytes:
    """The file's data key, from whichever slot a key in the ring opens (a torn or foreign slot is skipped)."""
    for slot in header.slots:
        data_key = _opens(slot, keyring, header.identity)
        if data_key is not None:
            return data_key
    seen = [SLOT.unpack(s)[0].hex() for s in header.slots if s != EMPTY_SLOT]
    if not seen:
        raise DecryptError(f"{where}: the header holds no key (damaged)")
    if any(keyring.find(bytes.fromhex(key_id)) for key_id in seen):
        raise DecryptError(f"{where}: its key slot does not open with the right key: the header was changed or "
                           "taken from another file")
    have = ", ".join(k.key_id.hex() for k in (keyring.current, *keyring.others))
    raise DecryptError(f"{where}: sealed under master key {' or '.join(seen)}, but the key given is {have} "
                       "(set TUNELAB_KEY or TUNELAB_KEY_FILE to the key it was written with)")


def segment_cipher(data_key: bytes, identity: bytes) -> AESGCM:
    salt = IDENTITY.unpack(identity)[3]
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"tunelab segments\x00" + identity)
    return AESGCM(derived.derive(data_key))


def nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 2 ** 32:
        raise TunelabError("file too large to encrypt (over 2^32 segments)")
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


# -- writing ---------------------------------------------------------------------------------------------------

class EncryptingWriter:
    """A binary file-like object: what is written to it reaches ``raw`` encrypted. ``close()`` seals the last
    segment; without it the file reads as truncated, never as complete."""

    def __init__(self, raw: IO[bytes], master: MasterKey):
        self.raw = raw
        data_key = os.urandom(32)
        self.identity = IDENTITY.pack(MAGIC, SEGMENT, os.urandom(7), os.urandom(16))
        self.prefix = IDENTITY.unpack(self.identity)[2]
        self.cipher = segment_cipher(data_key, self.identity)
        raw.write(self.identity + seal_slot(self.identity, data_key, master) + EMPTY_SLOT)
        self.buffer = bytearray()
        self.counter = 0
        self.closed = False

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed encrypted file")
        self.buffer += data
        while len(self.buffer) > SEGMENT:  # keep at least one byte back: the last segment is sealed on close
            self._emit(bytes(self.buffer[:SEGMENT]), last=False)
            del self.buffer[:SEGMENT]
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self.buffer), last=True)
            self.buffer.clear()
            self.closed = True

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def _emit(self, chunk: bytes, last: bool) -> None:
        self.raw.write(self.cipher.encrypt(nonce(self.prefix, self.counter, last), chunk, self.identity))
        self.counter += 1


def encrypt(data: bytes, master: MasterKey) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, master)
    writer.write(data)
    writer.close()
    return out.getvalue()


# -- reading ---------------------------------------------------------------------------------------------------

def iter_decrypt(raw: IO[bytes], keyring: Keyring, where: str = "file") -> Iterator[bytes]:
    """The plaintext of an encrypted stream, one segment at a time; raises DecryptError at the first segment
    that is not exactly what was written, before yielding anything from it."""
    header = Header.parse(raw.read(HEADER_SIZE), where)
    cipher = segment_cipher(open_slots(header, keyring, where), header.identity)
    size = SEGMENT + TAG
    current = raw.read(size)
    counter = 0
    while True:
        following = raw.read(size) if len(current) == size else b""
        last = not following
        if len(current) < TAG:
            raise DecryptError(f"{where}: cut short (segment {counter} is incomplete)")
        try:
            yield cipher.decrypt(nonce(header.prefix, counter, last), current, header.identity)
        except InvalidTag:
            raise DecryptError(_tamper_message(where, counter, last)) from None
        if last:
            return
        current, counter = following, counter + 1


def _tamper_message(where: str, counter: int, last: bool) -> str:
    if last:
        return (f"{where}: segment {counter} fails its check: the file was truncated, extended, or changed "
                "(or sealed under another data key)")
    return f"{where}: segment {counter} fails its check: the file was changed, reordered or spliced"


def decrypt(blob: bytes, keyring: Keyring, where: str = "data") -> bytes:
    return b"".join(iter_decrypt(io.BytesIO(blob), keyring, where))


# -- rotation ----------------------------------------------------------------------------------------------------

def rewrap_file(path, keyring: Keyring, new: MasterKey) -> bool:
    """Seal ``path``'s data key under ``new`` and clear every other slot, writing the header in place; False when
    the file was already only under ``new``.

    The new slot goes into the slot that does not hold the working key and is flushed to disk before the old one
    is cleared, so a crash at any point leaves a slot that the old or the new key opens."""
    with open(path, "r+b") as f:
        plan = rewrap_plan(Header.parse(f.read(HEADER_SIZE), str(path)), keyring, new, str(path))
        if plan is None:
            return False
        target, slot, working = plan
        _write_slot(f, target, slot)
        _write_slot(f, working, EMPTY_SLOT)
    return True


def rewrap_blob(blob: bytes, keyring: Keyring, new: MasterKey, where: str = "data") -> bytes | None:
    """The bytes of an encrypted blob with its data key under ``new`` only; None when it already is."""
    header = Header.parse(blob[:HEADER_SIZE], where)
    plan = rewrap_plan(header, keyring, new, where)
    if plan is None:
        return None
    target, slot, working = plan
    header.slots[target], header.slots[working] = slot, EMPTY_SLOT
    return header.to_bytes() + blob[HEADER_SIZE:]


def rewrap_plan(header: Header, keyring: Keyring, new: MasterKey, where: str) -> tuple[int, bytes, int] | None:
    """(slot to write, its new content, slot to clear after), or None when only ``new`` holds the key already."""
    ids = {SLOT.unpack(s)[0] for s in header.slots if s != EMPTY_SLOT}
    if ids == {new.key_id}:
        return None
    data_key = open_slots(header, keyring, where)
    working = next(i for i, slot in enumerate(header.slots) if _opens(slot, keyring, header.identity) == data_key)
    return 1 - working, seal_slot(header.identity, data_key, new), working


def _opens(slot: bytes, keyring: Keyring, identity: bytes) -> bytes | None:
    if slot == EMPTY_SLOT:
        return None
    key_id, slot_nonce, wrapped = SLOT.unpack(slot)
    master = keyring.find(key_id)
    try:
        return AESGCM(master.secret).decrypt(slot_nonce, wrapped, identity) if master is not None else None
    except InvalidTag:
        return None


def _write_slot(f, index: int, slot: bytes) -> None:
    f.seek(IDENTITY.size + index * SLOT.size)
    f.write(slot)
    f.flush()
    os.fsync(f.fileno())
