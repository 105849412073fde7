"""Typed run configuration: YAML plus ``a.b=value`` overrides, every problem reported at once.

Defaults live here and only here. Unknown keys are errors, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.data.templates import DEFAULT_LABEL_PROMPT
from tunelab.errors import ConfigError

Task = Literal["sft", "pretrain", "classification", "seq2seq", "distill"]
Method = Literal["lora", "dora", "rslora", "qlora", "ia3", "prefix", "prompt", "freeze", "full"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    train: str | None = Field(None, description="Training file (JSONL, JSON, CSV, TSV, Parquet or TXT).")
    val: str | None = Field(None, description="Validation file; when null, split off from train.")
    test: str | None = Field(None, description="Test file; when null, split off from train.")
    shape: Literal["auto", "prompt_completion", "alpaca", "messages", "sharegpt", "text", "text_label"] = "auto"
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    max_train_examples: int | None = Field(None, gt=0, description="Seeded random subset of the train split.")
    on_error: Literal["raise", "quarantine"] = Field(
        "quarantine", description="Bad rows stop the run (raise) or go to quarantine.jsonl with a reason.")
    label_prompt: str = Field(DEFAULT_LABEL_PROMPT, description="User prompt for text/label rows; "
                              "{text} and {choices} are filled in.")
    system_prompt: str | None = Field(None, description="System message added to every conversation.")

    @model_validator(mode="after")
    def _check(self):
        if "{text}" not in self.label_prompt:
            raise ValueError("label_prompt must contain {text}")
        return self


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Packed rows (or examples, without packing) per step.")
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(2.0e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(512, gt=8, description="Longest example, and the width of a packed row.")
    packing: bool = Field(True, description="Pack several examples per row with block-causal masks.")
    micro_batch_tokens: int = Field(
        1024, gt=0, description="Memory plan: a step's rows run in micro-batches of at most this many tokens "
        "(gradients accumulate, loss normalised over the whole step), so activation memory stays bounded.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Frozen-weight dtype. auto: bf16 where the hardware runs it fast, else fp32.")
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, gt=0)
    seed: int = 42


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description="Adapter dropout. 0 is fastest (measured: 0.05 costs "
                           "about 30% of CPU throughput and a third more memory); raise it to regularize.")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")


class QLoraConfig(Section):
    """The 4-bit base of method qlora; the adapter on top is set in the lora section."""

    compute_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="dtype the 4-bit weights are dequantized to for matmuls. auto: as train.precision.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (about 0.4 bits "
                               "per weight less).")


class IA3Config(Section):
    target_modules: list[str] | None = Field(None, description="Modules whose outputs are rescaled; null: "
                                             "peft's default for the architecture (Llama: k_proj, v_proj, down_proj).")
    feedforward_modules: list[str] | None = Field(None, description="Those of target_modules whose inputs are "
                                                  "rescaled instead; null: peft's default (Llama: down_proj).")

    @model_validator(mode="after")
    def _check(self):
        if self.feedforward_modules is not None:
            if self.target_modules is None:
                raise ValueError("feedforward_modules needs target_modules too (it must be a subset of them)")
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(f"feedforward_modules {extra} are not in target_modules {self.target_modules}")
        return self


class PrefixConfig(Section):
    num_virtual_tokens: int = Field(20, gt=0, description="Learned key/value positions prepended in every layer.")
    init: Literal["zero", "random"] = Field(
        "zero", description="zero: keys and values start at zero, so at first the prefix only dilutes attention. "
        "random: peft's default. Measured starting loss on SmolLM2 movie reviews: base 6.3, zero 5.1, random 12.9.")


class PromptConfig(Section):
    num_virtual_tokens: int = Field(20, gt=0, description="Learned embeddings prepended to every input.")
    init_text: str | None = Field(None, min_length=1, description="Start the virtual tokens from the embeddings "
                                  "of this text (repeated or cut to fit); null: random.")


class FreezeConfig(Section):
    """Method freeze: everything is frozen except what is named here."""

    last_n_layers: int = Field(2, ge=0, description="Train the last N transformer blocks (0: only modules).")
    train_norm: bool = Field(True, description="Also train the final norm before the output head.")
    modules: list[str] = Field([], description="Also train modules whose names match these shell-style "
                               "patterns, for example '*.mlp' or 'model.layers.0.*'.")

    @model_validator(mode="after")
    def _check(self):
        if self.last_n_layers == 0 and not self.modules:
            raise ValueError("last_n_layers must be at least 1 unless modules names what to train")
        return self


class ClassificationConfig(Section):
    """task: classification, a sequence-classification head trained on text/label rows."""

    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight each class's loss by n / (k * count of the class) in the train "
        "split (inverse frequency), so rare labels count as much as common ones.")


class EvalConfig(Section):
    baseline: bool = Field(True, description="Evaluate the base model on the same examples and prompt.")
    max_examples: int | None = Field(None, gt=0, description="Seeded subset of the test split.")
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(128, gt=0)


class RunConfig(Section):
    run_name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str = Field("smollm2-135m", description="Embedded default name, Hugging Face id or local folder.")
    task: Task = "sft"
    method: Method = "lora"
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    lora: LoraConfig = LoraConfig()
    qlora: QLoraConfig = QLoraConfig()
    ia3: IA3Config = IA3Config()
    prefix: PrefixConfig = PrefixConfig()
    prompt: PromptConfig = PromptConfig()
    freeze: FreezeConfig = FreezeConfig()
    classification: ClassificationConfig = ClassificationConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str = "runs"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ConfigError([f"override {item!r} is not key=value (for example train.max_steps=50)"], "command line")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    problems = []
    for item in overrides:
        try:
            path, value = parse_override(item)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                problems.append(f"{'.'.join(path)}: {part} is not a section")
                break
            node = node.setdefault(part, {})
        else:
            node[path[-1]] = value
    if problems:
        raise ConfigError(problems, "command line")
    return data


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            problems.append(f"{where}: {err['msg']}")
    return problems


def load_config(path: str | Path | None, overrides: list[str] = (), require_train_data: bool = True) -> RunConfig:
    """Read YAML (an empty file or /dev/null is an empty config), apply overrides, validate."""
    source = str(path) if path else "config"
    data: dict = {}
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read config: {exc.strerror}"], source) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"invalid YAML: {str(exc).splitlines()[0]}"], source) from None
        if not isinstance(data, dict):
            raise ConfigError(["the top level must be a mapping of keys to values"], source)
    data = apply_overrides(data, list(overrides))
    problems: list[str] = []
    config = None
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format_errors(exc))
    if require_train_data and not (data.get("data") or {}).get("train"):
        problems.append("data.train: required (a training file; set it in the config or as data.train=FILE)")
    if problems:
        raise ConfigError(problems, source)
    return config


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
