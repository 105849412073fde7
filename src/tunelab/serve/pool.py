"""The models a server answers for: one base model and any number of LoRA adapters on it.

The base is loaded once. Each adapter is a run folder (or a registry version: ``NAME@ALIAS`` or
``NAME@N``) loaded into the same peft model under its own name, with the tokenizer and chat template
saved with that run: the same files, template and precision ``tunelab eval`` used. Adapters are
attached and removed on the engine's thread between decode steps, never under a running forward.

An adapter named in an admin request must lie inside the allowed roots after every symlink is
followed: ``..`` in the path, absolute paths elsewhere and links out of a root are refused, and a path
the file system cannot take (NUL or control characters, names too long, symlink loops) is a 400, never
a 500. Look-alike characters (FULLWIDTH FULL STOP, ONE DOT LEADER) are plain name characters on POSIX
file systems, so they name folders inside the root like any other name.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.model_files import check_weights, resolve_model
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.fast.lora_forward import use_single_rounding
from tunelab.modeling.load import load_causal_lm, load_tokenizer
from tunelab.modeling.sealed_weights import attach_adapter
from tunelab.registry.erasure import tainted_reason
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
                 max_length: int | None = None, like: RunConfig | None = None, allow_tainted: bool = False):
        """``like``: a run whose precision and quantization the base is loaded with (the first adapter's),
        so adapters run on the base exactly as they were evaluated."""
        self.base_name, self.registry, self.allow_tainted = base, registry, allow_tainted
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
        return check_adapter(source, self.base_name, self.registry, self.roots, self.allow_tainted)

    def attach(self, name: str, source: AdapterSource) -> Served:
        """Load the adapter into the model under ``name`` (on the engine's thread, between steps)."""
        if name in self.served:
            raise ApiError(409, f"a model named {name!r} is already served; unload it first", param="name")
        # checked first (peft would unpickle an adapter_model.bin); an encrypted adapter is decrypted in memory
        self.model = attach_adapter(self.model, source.folder, adapter_name=name)
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


def check_adapter(source: str, base: str, registry, roots: list[Path] | None,
                  allow_tainted: bool = False) -> AdapterSource:
    """The adapter run ``source`` names: a run folder (inside ``roots``; None: any folder, as given on the
    command line) or a registry version; refused unless it is a LoRA adapter trained on ``base`` and, without
    ``allow_tainted``, untouched by an erasure."""
    if any(ord(c) < 32 or ord(c) == 127 for c in source):
        message = "an adapter source may not contain NUL or other control characters"
        raise TunelabError(message) if roots is None else ApiError(400, message, param="source")
    if _is_registry_ref(source):
        folder, version = _from_registry(registry, source)
    else:
        folder, version = (Path(source) if roots is None else inside_roots(source, roots)), None
    try:
        version = version or folder.resolve().name
        is_run = RunFolder.is_run(folder)
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop, unencodable text
        reason = getattr(exc, "strerror", None) or exc
        raise TunelabError(f"cannot read adapter {source[:200]!r}: {reason}") from None
    if not is_run:
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
    erasure = tainted_reason(registry, folder) if registry is not None else None
    if erasure and not allow_tainted:
        problems.append(f"it learned from rows removed by erasure {erasure} (tainted): retrain it without them, "
                        "or serve it anyway with --allow-tainted")
    if problems:
        raise TunelabError(f"cannot serve {source}: " + "; ".join(problems))
    check_weights(run.weights_dir, adapter=True)
    return AdapterSource(run.weights_dir, config, version)


def inside_roots(text: str, roots: list[Path]) -> Path:
    """``text`` as a folder inside one of ``roots`` (resolved), with nothing in it linking out."""
    path = Path(text)
    if ".." in path.parts:
        raise ApiError(403, "an adapter path may not contain '..'", param="source")
    try:
        resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
        root = next((r for r in roots if resolved.is_relative_to(r)), None)
        if root is None:
            raise ApiError(403, f"{text} is outside the adapter roots ({', '.join(map(str, roots)) or 'none'}; "
                                "add one with tunelab serve --adapter-root DIR)", param="source")
        for inner in resolved.rglob("*"):
            if not inner.resolve().is_relative_to(root):
                raise ApiError(403, f"{text} links out of its root ({inner.relative_to(resolved)})", param="source")
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a symlink loop, bytes the OS refuses
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ApiError(400, f"cannot use {text[:200]!r} as an adapter path: {reason}", param="source") from None
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
    try:
        return "@" in source and not Path(source).exists()
    except (OSError, ValueError):  # a name the file system cannot take is no folder; inside_roots says why
        return False


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
