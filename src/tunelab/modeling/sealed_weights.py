"""Model weights and Trainer state on disk: encrypted at rest when a master key is set, read back in memory.

With a master key (``TUNELAB_KEY``, ``TUNELAB_KEY_FILE`` or ``$TUNELAB_HOME/master.key``), every
``*.safetensors`` file tunelab writes (a run's adapter or model, the weights in a Trainer checkpoint, an
export) is serialized in memory and written through ``security.files``, encrypted; so are the pickles Trainer
keeps in a checkpoint (``save_torch``). Reading decrypts into memory and builds the model or adapter from the
tensors: no plaintext copy is written anywhere, a temporary folder included. Without a key, saving and loading
are the libraries' own ``save_pretrained``/``from_pretrained``/``load_adapter``, file for file as before; both
kinds of folder load, whichever is found.

The files an encrypted save writes are the ones ``save_pretrained`` writes (same names, config, tensor names and
safetensors metadata): ``tunelab decrypt`` turns the folder back into exactly what a save without a key gives,
which plain transformers, peft, vLLM or llama.cpp load.
"""

from __future__ import annotations

import io
from pathlib import Path

import safetensors.torch
import torch
from peft import (MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftConfig, PeftModel, get_peft_model_state_dict,
                  set_peft_model_state_dict)
from safetensors import SafetensorError
from transformers import AutoConfig, GenerationConfig
from transformers.modeling_utils import remove_tied_weights_from_state_dict, revert_weight_conversion
from transformers.models.auto.auto_factory import _get_model_class

from tunelab.errors import TunelabError
from tunelab.model_files import (check_safetensors_head, check_weights, config_options, encrypted_weights,
                                 remote_code_trusted, weights_options)
from tunelab.security import files
from tunelab.security.crypto import is_encrypted_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_WEIGHTS = "model.safetensors"
METADATA = {"format": "pt"}  # the header metadata transformers and peft write
# from_pretrained keywords that are about loading; every other keyword sets a config field (num_labels, ...)
LOAD_OPTIONS = ("dtype", "attn_implementation", "quantization_config", "device_map", "use_safetensors",
                "trust_remote_code")
CHUNK = 1 << 20


# -- writing ----------------------------------------------------------------------------------------------------

def save_pretrained(model, folder: str | Path) -> None:
    """``model.save_pretrained(folder)`` (a peft model: its adapters); with a master key its weights are encrypted
    on the way out and never reach the disk in plaintext."""
    if not files.encryption_on():
        model.save_pretrained(folder)
        return
    folder = Path(folder)
    if isinstance(model, PeftModel):  # peft's save_pretrained writes some weights whatever state dict it gets
        folder.mkdir(parents=True, exist_ok=True)
        model.create_or_update_model_card(str(folder))
        for name in model.peft_config:
            target = folder if name == "default" else folder / name  # where peft puts each adapter
            _save_adapter_config(model, name, target)
            write_weights(target / ADAPTER_WEIGHTS, adapter_weights(model, name))
        return
    if getattr(model, "hf_quantizer", None) is not None:
        raise TunelabError("a quantized whole model cannot be saved encrypted; save its adapter instead")
    # transformers writes the config and generation config as always, and with an empty state dict no weights
    model.save_pretrained(folder, state_dict={})
    write_weights(folder / MODEL_WEIGHTS, model_weights(model))


def adapter_weights(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors peft's ``save_pretrained`` puts in adapter_model.safetensors, under its names
    (``base_model.model....lora_A.weight``), so a plain peft load of the decrypted file works."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}  # peft too unties shared tensors


def model_weights(model) -> dict[str, torch.Tensor]:
    """The tensors transformers' ``save_pretrained`` puts in model.safetensors: tied copies left out, names in
    the checkpoint's original format."""
    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    state = revert_weight_conversion(model, remove_tied_weights_from_state_dict(state, model))
    return {k: v.contiguous() for k, v in state.items()}


def _save_adapter_config(model, adapter_name: str, folder: Path) -> None:
    """What peft's ``save_pretrained`` writes beside an adapter's weights: adapter_config.json, with
    ``inference_mode`` true and the base model's name filled in, as peft writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[adapter_name]  # the live config, as peft saves it (a copy may reorder its sets)
    if config.base_model_name_or_path is None:
        base = model.base_model if config.is_prompt_learning else model.base_model.model
        config.base_model_name_or_path = base.__dict__.get("name_or_path", None) or None
    auto_mapping = None
    if config.task_type is None:
        base_class = model._get_base_model_class(is_prompt_tuning=config.is_prompt_learning)
        auto_mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
    inference_mode, config.inference_mode = config.inference_mode, True
    try:
        config.save_pretrained(str(folder), auto_mapping_dict=auto_mapping)
    finally:
        config.inference_mode = inference_mode


def write_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file, serialized in memory and written (encrypted when a key is set) atomically."""
    data = memoryview(safetensors.torch.save(tensors, metadata=METADATA))
    with files.sealed_writer(path) as f:
        for start in range(0, len(data), CHUNK):
            f.write(data[start:start + CHUNK])


def save_torch(obj, path: str | Path) -> None:
    """``torch.save(obj, path)``, encrypted when a key is set (Trainer's optimizer, scheduler and RNG state)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    files.write_bytes(path, buffer.getvalue())


# -- reading ----------------------------------------------------------------------------------------------------

def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU), decrypted in memory when it is encrypted. A damaged or
    tampered file, or a missing or wrong key, is one line."""
    path = Path(path)
    with files.open_readable(path) as f:
        data = f.read()
    check_safetensors_head(data[:9], len(data), path)
    try:
        return safetensors.torch.load(data)
    except SafetensorError as exc:
        raise TunelabError(f"{path} is not a valid safetensors file ({str(exc).splitlines()[0]})") from None


def load_torch(path: str | Path, **options):
    """``torch.load(path, weights_only=True)`` of a file that may be encrypted, decrypted in memory."""
    return torch.load(io.BytesIO(files.read_bytes(path)), weights_only=True, **options)


def is_sealed(folder: str | Path) -> bool:
    """Whether ``folder`` holds weights encrypted at rest."""
    return bool(encrypted_weights(folder))


def from_pretrained(model_class, folder: str | Path, **options):
    """``model_class.from_pretrained(folder, **options)`` with tunelab's checks (``weights_options``). A folder
    whose weights are encrypted is built from its tensors decrypted in memory, with its own config and
    generation config; ``options`` that are not loading options set config fields, as they do for transformers."""
    if not is_sealed(folder):
        return model_class.from_pretrained(folder, **options, **weights_options(folder))
    folder = Path(folder)
    check_weights(folder)
    state = {}
    for path in sorted(folder.glob("*.safetensors")):  # every shard (an index file only names them)
        state.update(read_weights(path))
    load = {k: v for k, v in options.items() if k in LOAD_OPTIONS and k not in ("use_safetensors", "trust_remote_code")}
    config = AutoConfig.from_pretrained(folder, **config_options(folder),
                                        **{k: v for k, v in options.items() if k not in LOAD_OPTIONS})
    generation = folder / "generation_config.json"
    model = _concrete_class(model_class, config, folder).from_pretrained(
        None, config=config, state_dict=state,
        generation_config=GenerationConfig.from_pretrained(folder) if generation.is_file() else None, **load)
    model.name_or_path = model.config.name_or_path = str(folder)  # what peft records as the adapter's base
    return model


def _concrete_class(model_class, config, folder: Path):
    """The model class an Auto class picks for ``config`` (a concrete class stands for itself)."""
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is None:
        return model_class
    if getattr(config, "auto_map", None) and remote_code_trusted():
        raise TunelabError(f"{folder} holds encrypted weights of a model with its own code (auto_map); tunelab "
                           f"builds only transformers' own classes from memory: decrypt it first (tunelab decrypt)")
    try:
        return _get_model_class(config, mapping)
    except (KeyError, ValueError):
        raise TunelabError(f"{folder}: {model_class.__name__} has no class for a {config.model_type} model") from None


def attach_adapter(model, folder: str | Path, adapter_name: str = "default"):
    """``model`` with the peft adapter saved in ``folder`` attached as ``adapter_name``, for inference: a plain
    model becomes a ``PeftModel``; a ``PeftModel`` gets one adapter more. A plaintext adapter goes through peft's
    ``from_pretrained``/``load_adapter`` as before; an encrypted one is decrypted in memory and set with
    ``set_peft_model_state_dict``."""
    folder = Path(folder)
    check_weights(folder, adapter=True)  # peft would unpickle an adapter_model.bin
    if not is_encrypted_file(folder / ADAPTER_WEIGHTS):
        if isinstance(model, PeftModel):
            model.load_adapter(folder, adapter_name=adapter_name)
            return model
        return PeftModel.from_pretrained(model, folder, adapter_name=adapter_name)
    state = read_weights(folder / ADAPTER_WEIGHTS)
    config = PeftConfig.from_pretrained(folder)
    config.inference_mode = True
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
    else:
        model = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)(model, config, adapter_name)
    load_adapter_weights(model, state, adapter_name, folder)
    return model.eval()


def load_adapter_weights(model, state: dict[str, torch.Tensor], adapter_name: str, where: Path) -> None:
    """Set ``adapter_name``'s weights of a peft model from ``state`` (as saved: ``read_weights``); an adapter that
    does not fit the model (a weight it needs is missing) is refused in one line."""
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    # the adapter's own weights; a prompt encoder's embedding is set apart from load_state_dict (peft skips it too)
    missing = [k for k in result.missing_keys
               if (f".{adapter_name}." in k or k.endswith(f".{adapter_name}")) and "prompt_encoder" not in k]
    if missing:
        raise TunelabError(f"{where} does not fit this model: it has no weight for {missing[0]}")
    base = getattr(model, "base_model", None)
    if hasattr(base, "_cast_adapter_dtype"):  # as peft's load_adapter does: fp16/bf16 adapter weights to fp32
        base._cast_adapter_dtype(adapter_name=adapter_name, autocast_adapter_dtype=True)
