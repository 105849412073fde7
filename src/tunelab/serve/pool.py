"""The models a server answers for: one base model and any number of LoRA adapters on it.

The base is loaded once. Each adapter is a run folder (or a registry version: ``NAME@ALIAS`` or
``NAME@N``) loaded into the same peft model under its own name, with the tokenizer and chat template
saved with that run: the same files, template and precision ``tunelab eval`` used. Adapters are
attached and removed on the engine's thread between decode steps, never under a running forward.

An adapter named in an admin request must lie inside the allowed roots after every symlink is
followed: ``..`` in the path, absolute paths elsewhere and links out of a root are refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.model_files import resolve_model
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.fast.lora_forward import use_single_rounding
from tunelab.modeling.load import load_causal_lm, load_tokenizer
from tunelab.registry.models import resolve
from tunelab.runs.folder import RunFolder
from tunelab.serve.errors import ApiError

SERVABLE_METHODS = ("lora", "rslora", "dora", "qlora")  # what peft mixes in one batch (adapter_names)
DEFAULT_MAX_LENGTH = 8192


@dataclass
class Served:
    """A name clients can send as ``model``, and what answering it takes."""

    name: str
    tokenizer: object
    adapter: str | None  # the peft adapter's name; None for the base model
    version: str  # NAME@N for a registry version, the run folder's name, or base:<model>
    fingerprint: str  # sha256 of the weights files, first 12 hex digits
    source: str
    system_prompt: str | None
    eos: frozenset[int]
    max_length: int
    created: int
    parent: str | None = None

    @property
    def system_fingerprint(self) -> str:
        return f"{self.version}:{self.fingerprint}"


@dataclass
class AdapterSource:
    """A checked adapter run, ready to attach."""

    folder: Path  # the run's adapter/ folder
    config: RunConfig
    version: str


class ModelPool:
    def __init__(self, base: str, *, registry=None, roots: list[Path] | None = None,
                 max_length: int | None = None, like: RunConfig | None = None):
        """``like``: a run whose precision and quantization the base is loaded with (the first adapter's),
        so adapters run on the base exactly as they were evaluated."""
        self.base_name, self.registry = base, registry
        self.roots = [Path(r).resolve() for r in (roots or [])]
        config = like.model_copy(update={"model": base}) if like is not None else RunConfig(model=base)
        self.base_config = config
        tokenizer, self.model = load_causal_lm(config)
        prepare_for_inference(self.model.eval(), config)
        limit = getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
        self.max_length = min(limit, max_length or DEFAULT_MAX_LENGTH)
        self.served: dict[str, Served] = {base: Served(
            base, tokenizer, None, f"base:{base}", _digest(_weights_of(base)), base, None,
            eos_ids(tokenizer, self.model), self.max_length, int(time.time()))}

    # -- lookups (any thread) ----------------------------------------------------------------------------

    def get(self, name: str) -> Served:
        served = self.served.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist; served here: {', '.join(self.served)}",
                           param="model", code="model_not_found")
        return served

    def adapters(self) -> list[Served]:
        return [s for s in self.served.values() if s.adapter is not None]

    # -- adapters ----------------------------------------------------------------------------------------

    def check_source(self, source: str) -> AdapterSource:
        """An adapter named in an admin request: inside the allowed roots, or a registry version."""
        return check_adapter(source, self.base_name, self.registry, self.roots)

    def attach(self, name: str, source: AdapterSource) -> Served:
        """Load the adapter into the model under ``name`` (on the engine's thread, between steps)."""
        if name in self.served:
            raise ApiError(409, f"a model named {name!r} is already served; unload it first", param="name")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(source.folder, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, source.folder, adapter_name=name)
        self.model.eval()
        use_single_rounding(self.model)
        tokenizer = load_tokenizer(source.folder)
        served = Served(name, tokenizer, name, source.version, _digest(_weights_of(source.folder)),
                        str(source.folder.parent), source.config.data.system_prompt, eos_ids(tokenizer, self.model),
                        self.max_length, int(time.time()), parent=self.base_name)
        self.served[name] = served
        return served

    def detach(self, name: str) -> None:
        """Remove an adapter (on the engine's thread, once no row uses it)."""
        self.served.pop(name, None)
        if self.adapters():
            self.model.delete_adapter(name)
        else:
            self.model = self.model.unload()  # the last one: back to the plain base model


def check_adapter(source: str, base: str, registry, roots: list[Path] | None) -> AdapterSource:
    """The adapter run ``source`` names: a run folder (inside ``roots``; None: any folder, as given on the
    command line) or a registry version; refused unless it is a LoRA adapter trained on ``base``."""
    if _is_registry_ref(source):
        folder, version = _from_registry(registry, source)
    else:
        folder = Path(source) if roots is None else inside_roots(source, roots)
        version = folder.resolve().name
    if not RunFolder.is_run(folder):
        raise TunelabError(f"{source} is not a run folder (no config.yaml with an adapter/ or model/)")
    run = RunFolder(folder)
    config = run.config()
    problems = []
    if config.task not in ("sft", "pretrain", "distill", "dpo"):
        problems.append(f"its task is {config.task} (a server answers with causal LMs)")
    if config.method not in SERVABLE_METHODS:
        problems.append(f"its method is {config.method}; adapters served together must be one of "
                        f"{', '.join(SERVABLE_METHODS)} (serve a merged export with --base instead)")
    if config.model != base:
        problems.append(f"it was trained on {config.model}, not on this server's base {base}")
    if problems:
        raise TunelabError(f"cannot serve {source}: " + "; ".join(problems))
    return AdapterSource(run.weights_dir, config, version)


def inside_roots(text: str, roots: list[Path]) -> Path:
    """``text`` as a folder inside one of ``roots`` (resolved), with nothing in it linking out."""
    path = Path(text)
    if ".." in path.parts:
        raise ApiError(403, "an adapter path may not contain '..'", param="source")
    resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
    root = next((r for r in roots if resolved.is_relative_to(r)), None)
    if root is None:
        raise ApiError(403, f"{text} is outside the adapter roots ({', '.join(map(str, roots)) or 'none'}; "
                            "add one with tunelab serve --adapter-root DIR)", param="source")
    for inner in resolved.rglob("*"):
        if not inner.resolve().is_relative_to(root):
            raise ApiError(403, f"{text} links out of its root ({inner.relative_to(resolved)})", param="source")
    return resolved


def _from_registry(registry, ref: str) -> tuple[Path, str]:
    if registry is None:
        raise TunelabError(f"{ref} names a registry model, but the server has no registry")
    with registry.session() as session:
        model, version = resolve(session, ref)
        return Path(version.artifact_path).parent, f"{model.name}@{version.version}"


def eos_ids(tokenizer, model) -> frozenset[int]:
    """The tokens that end an answer: the tokenizer's end token and the model's generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return frozenset(i for i in ids if i is not None)


def _is_registry_ref(source: str) -> bool:
    return "@" in source and not Path(source).exists()


def _weights_of(source: str | Path) -> list[Path]:
    """The weight files of a folder, or of the folder a model name loads from (already there: loaded first)."""
    folder = Path(source) if Path(source).is_dir() else resolve_model(str(source))
    return sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf"))


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]
