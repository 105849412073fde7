"""Trainer checkpoints, sealed when they are written and verified before a resume loads them.

Trainer saves a checkpoint's optimizer, scheduler, RNG states and arguments (optimizer.pt, scheduler.pt,
rng_state*.pth, training_args.bin) with ``torch.save``, and resuming loads them with ``torch.load``: a
pickle. So when a checkpoint is saved, every file in it is hashed (sha256) and the list is signed with
HMAC-SHA256 under a key only this user's tunelab holds (``$TUNELAB_HOME/checkpoint.key``, owner-only, made
on first use). A resume loads a checkpoint only when its files are exactly the signed ones with the signed
hashes; a file changed, added or swapped after training wrote it, or a checkpoint sealed under another key
(another machine or user: copy the key file along to resume there), is refused before anything is unpickled.
With a master key set the files are encrypted (``SealedTrainer`` in train/fit.py), and the seal hashes them as
they lie on disk, less the key slots a key rotation rewrites.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

from transformers import TrainerCallback

from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, read_json
from tunelab.paths import tunelab_home
from tunelab.runs.folder import sha256_file
from tunelab.security.crypto import HEADER_SIZE, IDENTITY, is_encrypted_file
from tunelab.security.secrets import local_secret

SEAL_NAME = "tunelab_seal.json"
KEY_FILE = "checkpoint.key"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_key() -> bytes:
    """The signing key: ``$TUNELAB_HOME/checkpoint.key``, 32 random bytes (hex) made on first use, owner-only,
    sealed under the master key when one is set (``security.secrets``)."""
    return local_secret(KEY_FILE)


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` but the seal, by relative path, with its sha256."""
    return {p.relative_to(folder).as_posix(): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != SEAL_NAME}


def _digest(path: Path) -> str:
    """sha256 of a file as training wrote it. With a master key set the checkpoint's files are encrypted, and
    ``tunelab keys rotate`` rewrites their key slots in place: an encrypted file is hashed without its slots (a slot
    only wraps the file's data key, which the segments are bound to, so a changed slot opens nothing else).
    A plaintext file is hashed whole, as before."""
    if not is_encrypted_file(path):
        return sha256_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(IDENTITY.size))
        f.seek(HEADER_SIZE)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature(name: str, files: dict[str, str]) -> str:
    message = json.dumps({"checkpoint": name, "files": files}, sort_keys=True).encode()
    return hmac.new(checkpoint_key(), message, hashlib.sha256).hexdigest()


def seal_checkpoint(folder: Path) -> None:
    """Write ``tunelab_seal.json``: the sha256 of every file in the checkpoint, signed."""
    files = _files(folder)
    atomic_write_json(folder / SEAL_NAME, {"files": files, "hmac": _signature(folder.name, files)})


def verify_checkpoint(folder: Path) -> None:
    """Raise a one-line TunelabError unless every file of ``folder`` is one the seal lists, unchanged."""
    seal = read_json(folder / SEAL_NAME)
    refused = f"refusing to resume from {folder}"
    if not isinstance(seal, dict) or not isinstance(seal.get("files"), dict):
        raise TunelabError(f"{refused}: it has no valid {SEAL_NAME}, so its pickled trainer state cannot be trusted")
    if not hmac.compare_digest(str(seal.get("hmac", "")), _signature(folder.name, seal["files"])):
        raise TunelabError(f"{refused}: its seal was not signed with this machine's checkpoint key "
                           f"({tunelab_home() / KEY_FILE}); it was changed, or written by another user or machine")
    found = _files(folder)
    changed = sorted(name for name in set(found) | set(seal["files"]) if found.get(name) != seal["files"].get(name))
    if changed:
        raise TunelabError(f"{refused}: {changed[0]} is not the file training wrote (changed, added or missing "
                           f"since the checkpoint was sealed); nothing in it was loaded")


def checkpoints_newest_first(checkpoints_dir: Path) -> list[Path]:
    if not checkpoints_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints_dir.iterdir()
             if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resumable_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest checkpoint, verified; one without a seal (the run was killed while saving it) is skipped
    for the one before it, and one whose seal does not match is refused."""
    for folder in checkpoints_newest_first(checkpoints_dir):
        if not (folder / SEAL_NAME).exists():
            print(f"skipping {folder.name}: it has no seal (the run stopped while saving it, or an older tunelab "
                  f"wrote it)", flush=True)
            continue
        verify_checkpoint(folder)
        return folder
    return None


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a (verified) checkpoint was saved at, from its trainer_state.json."""
    state = read_json(folder / "trainer_state.json") or {}
    return int(state.get("global_step", CHECKPOINT_NAME.match(folder.name).group(1)))


class SealCheckpoints(TrainerCallback):
    """Seal each checkpoint right after Trainer has written it."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            seal_checkpoint(folder)
