"""Typed run configuration: YAML plus ``a.b=value`` overrides, every problem reported at once.

Defaults live here and only here. Unknown keys are errors, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import ConfigError

DEFAULT_LABEL_PROMPT = ("Classify the following text as one of: {choices}. Answer with the label only.\n\n"
                        "Text: {text}")

Task = Literal["sft", "pretrain", "classification", "seq2seq", "distill"]
Method = Literal["lora", "dora", "rslora", "qlora", "ia3", "prefix", "prompt", "freeze", "full"]


ALL_METHODS = ("lora", "dora", "rslora", "qlora", "ia3", "prefix", "prompt", "freeze", "full")


@dataclass(frozen=True)
class TaskSupport:
    """What one task's recipe does with the settings every task's config accepts.

    ``settings`` are the shared settings the recipe acts on; a setting outside them that a config sets
    to anything but its default is refused with the config's other problems, never silently ignored.
    """

    packs: bool  # several examples per row, block-causal (sft, pretrain, distill)
    methods: tuple[str, ...]
    settings: frozenset[str]


# Shared settings that only some recipes act on (every other setting applies to every task).
TASK_SETTINGS = ("train.early_stopping", "train.curriculum", "data.mix", "train.packing", "train.packed_attention",
                 "train.compile", "eval.forgetting_text", "classification.class_weights", "distill.teacher",
                 "distill.student_layers", "distill.alpha", "distill.temperature", "distill.positions")
_PACKED = frozenset({"train.early_stopping", "train.curriculum", "data.mix", "train.packing",
                     "train.packed_attention", "train.compile"})
_TEACHER = frozenset({"distill.teacher", "distill.student_layers", "distill.alpha", "distill.temperature"})
# The one table of tasks: the recipe functions that run them are listed in tunelab/train/recipes.py.
TASKS: dict[str, TaskSupport] = {
    "sft": TaskSupport(True, ALL_METHODS, _PACKED),
    "pretrain": TaskSupport(True, ALL_METHODS, _PACKED | {"eval.forgetting_text"}),
    "distill": TaskSupport(True, ALL_METHODS, _PACKED | _TEACHER | {"distill.positions"}),
    "classification": TaskSupport(False, ("full", "lora", "dora", "rslora"),
                                  frozenset({"train.early_stopping", "data.mix", "classification.class_weights"})
                                  | _TEACHER),
    "seq2seq": TaskSupport(False, ALL_METHODS, frozenset({"train.early_stopping", "data.mix"})),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MixSource(Section):
    """One dataset of ``data.mix``: its own files, split on its own, and its weight in the training mix."""

    train: str = Field(..., description="Training file of this source (any format data.train accepts).")
    weight: float = Field(1.0, gt=0, description="Relative share of this source in the mixed training set.")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Name in data_summary.json and "
                      "in per-source metrics (tuned.by_source.<name>); default: the train file's name without "
                      "its extension.")
    val: str | None = Field(None, description="Validation file of this source; null: split off from its train "
                            "file by data.val_fraction.")
    test: str | None = Field(None, description="Test file of this source; null: split off from its train file "
                             "by data.test_fraction.")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, values):
        if isinstance(values, dict) and not values.get("name") and isinstance(values.get("train"), str):
            values = {**values, "name": Path(values["train"]).stem}
        return values


class DataConfig(Section):
    train: str | None = Field(None, description="Training file (JSONL, JSON, CSV, TSV, Parquet or TXT).")
    mix: list[MixSource] | None = Field(
        None, min_length=1, description="Several datasets instead of train, for example [{train: a.jsonl, weight: "
        "2}, {train: b.jsonl}]. Each source is read and split into train/val/test on its own (val and test per "
        "source, or split off by val_fraction/test_fraction), then the training rows are mixed: the mixed set "
        "has as many rows as all sources' train splits together (or max_train_examples, if smaller), and "
        "source i gets round(total * weight_i / sum of weights) of them (largest remainders get the rounding). "
        "A source asked for fewer rows than it has is downsampled (a seeded sample without repetition); one "
        "asked for more is upsampled (every row repeated floor(share / rows) times, plus a seeded sample of "
        "the rest without repetition). The mix is shuffled with data.seed (or train.seed). Val and test splits are not "
        "resampled; evaluation reports every metric per source as well as overall.")
    val: str | None = Field(None, description="Validation file; when null, split off from train.")
    test: str | None = Field(None, description="Test file; when null, split off from train.")
    shape: Literal["auto", "prompt_completion", "alpaca", "messages", "sharegpt", "text", "text_label"] = "auto"
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    max_train_examples: int | None = Field(None, gt=0, description="Seeded random subset of the train split.")
    seed: int | None = Field(None, description="Seed for the train/val/test split, the max_train_examples "
                             "subset and the evaluated subset; null: train.seed. Set it to train several seeds "
                             "on the same data.")
    on_error: Literal["raise", "quarantine"] = Field(
        "quarantine", description="Bad rows stop the run (raise) or go to quarantine.jsonl with a reason.")
    label_prompt: str = Field(DEFAULT_LABEL_PROMPT, description="User prompt for text/label rows; "
                              "{text} and {choices} are filled in.")
    system_prompt: str | None = Field(None, description="System message added to every conversation.")

    @model_validator(mode="after")
    def _check(self):
        if "{text}" not in self.label_prompt:
            raise ValueError("label_prompt must contain {text}")
        if self.mix is not None:
            if self.train:
                raise ValueError("set data.train or data.mix, not both")
            if self.val or self.test:
                raise ValueError("with data.mix, give val and test files per source (data.mix[i].val, "
                                 "data.mix[i].test), not data.val or data.test")
            names = [source.name for source in self.mix]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"data.mix names must differ; {', '.join(repeated)} is used twice (set name: "
                                 "for each source)")
        return self


class EarlyStoppingConfig(Section):
    """train.early_stopping: validation loss (on the val split, lower is better) decides when to stop."""

    patience: int = Field(3, gt=0, description="Stop after this many evaluations in a row without improvement.")
    eval_steps: int = Field(20, gt=0, description="Compute the validation loss every this many optimizer steps "
                            "(and once more at the end of training). It is logged as val_loss in train_log.jsonl.")
    min_delta: float = Field(0.0, ge=0, description="An evaluation improves on the best so far only when its loss "
                             "is lower by more than this. The weights of the best evaluation are restored at the "
                             "end of training, so the saved adapter (or model) is the best one seen.")


VAL_LOSS_POINTS = 10  # train.val_loss.every_steps auto: about this many validation points per run


class ValidationLossConfig(Section):
    """train.val_loss: the validation-loss curve logged next to the training loss, to see overfitting."""

    every_steps: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="Compute the validation loss every this many optimizer steps, and once more at the "
        "last step; each point is a val_loss row (with step, epoch and trained tokens) in train_log.jsonl. auto: "
        f"every ceil(S / {VAL_LOSS_POINTS}) steps, S being the run's optimizer steps, so about {VAL_LOSS_POINTS} "
        f"points per run (at most {VAL_LOSS_POINTS + 1} with the last step's; every step when S is "
        f"{VAL_LOSS_POINTS} or less).")
    max_examples: int = Field(32, gt=0, description="Most validation examples the loss is taken on (val rows; "
                              "chunks of train.max_length tokens for task pretrain): a seeded subset (data.seed) "
                              "of the val split, the same at every point, so the points are comparable and each "
                              "one stays cheap (on the quickstart run 64 examples took 2.5 s a point, about two "
                              "training steps, 8% of the run; 32 take about half). Runs without val rows log no "
                              "validation loss. With "
                              "train.early_stopping on, its own evaluations (on the whole val split, every "
                              "eval_steps) are the validation curve instead.")

    @field_validator("every_steps", mode="before")
    @classmethod
    def _steps_or_auto(cls, value):
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value != "auto" and not (whole and value > 0):
            raise ValueError(f"must be a whole number of steps above 0, or auto; got {value!r}")
        return value


Tracker = Literal["tensorboard", "mlflow", "wandb"]
# Tracker -> the modules Trainer can log to it with (the first is also the package to install).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step (packed or not).")
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(2.0e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(512, gt=8, description="Longest example, and the width of a packed row.")
    packing: bool = Field(True, description="Pack several examples per row with block-causal masks (speed only: "
                          "a step still holds batch_size examples).")
    curriculum: Literal["none", "length", "base_loss"] = Field(
        "none", description="Order of training: none shuffles the steps every epoch; length runs short examples "
        "first; base_loss runs the examples the base model already predicts well first (costs one forward pass "
        "over the training set). Curricula keep their order every epoch.")
    packed_attention: Literal["mask", "segments"] = Field(
        "segments", description="How packed examples are kept apart. segments: causal attention within each "
        "example as batched matmuls, each micro-batch one row (CPU, Llama-family models; elsewhere the mask). mask: "
        "a block-causal mask per row with SDPA. On the throughput benchmark (AMD EPYC with AVX512-BF16, 2 cores) "
        "segments trained at 446-466 against 297 tokens/s, and on the quickstart's data with compiled layers at 461 "
        "against 385.")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the decoder layers (fuses the element-wise work around each matmul): "
        "true, false, or auto: on CPU when the run has at least 100 forward passes to pay back the compile time "
        "(about 30-45 s the first time, a few seconds once cached).")
    micro_batch_tokens: int = Field(
        2048, gt=0, description="Memory plan: a step's rows run in micro-batches of at most this many tokens "
        "(gradients accumulate, loss normalised over the whole step), so activation memory stays bounded. "
        "Measured on the throughput benchmark (SmolLM2-135M, LoRA): 2048 gave 4-8% more tokens/s than 1024 "
        "(fewer, larger matmuls), at about 2.8 GB peak RSS against 2.3 GB.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Frozen-weight dtype. auto: bf16 where the hardware runs it fast, else fp32.")
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, gt=0)
    seed: int = 42
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Stop when validation loss stops improving, and keep the best weights; null: off.")
    val_loss: ValidationLossConfig | None = Field(
        default_factory=ValidationLossConfig, description="Log the validation loss at intervals during training "
        "(val_loss rows in train_log.jsonl, drawn in training_curve.png next to the training loss), on a capped, "
        "fixed subset of the val split, to see overfitting as it happens; null: off.")
    report_to: list[Tracker] = Field(
        [], description="Experiment trackers Trainer also logs to, next to train_log.jsonl (which is always "
        "written), in every task: tensorboard (event files in <run folder>/tensorboard/), mlflow (to "
        "MLFLOW_TRACKING_URI, or when that is unset a file store in <run folder>/mlruns; the MLflow run is named "
        "after run_name), wandb (the W&B run is named after run_name; WANDB_MODE=offline keeps it local). Each "
        "needs its package installed; a name given twice counts once.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def missing_trackers(self) -> list[str]:
        """One problem per tracker in report_to whose package is not installed (found without importing it)."""
        return [f"train.report_to: {name} is not installed; pip install {TRACKER_PACKAGES[name][0]}"
                for name in self.report_to
                if not any(importlib.util.find_spec(module) for module in TRACKER_PACKAGES[name])]


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description="Adapter dropout. 0 is fastest (measured on the "
                           "throughput benchmark, Xeon with AMX: 0.05 cost 43% of CPU tokens/s and 26% more peak "
                           "memory); raise it to regularize.")
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


class DistillConfig(Section):
    """task: distill, a student trained on its teacher's next-token distributions and on the answers; or
    task: classification with a teacher, a head trained on its teacher classifier's class probabilities."""

    teacher: str | None = Field(None, description="The teacher: a model folder, Hugging Face id, embedded name "
                                "or a finished tunelab run folder (its adapter is merged into its base). task "
                                "distill: a causal LM that shares the student's vocabulary (required). task "
                                "classification: a classification run or sequence-classification model whose labels "
                                "include the student's, any tokenizer (optional: label-level distillation).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term, alpha * T^2 * "
                         "KL(teacher || student at temperature T); the answer cross-entropy gets 1 - alpha. "
                         "0: plain SFT of the student (the teacher is not loaded).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of both models in the KL term; "
                               "above 1 spreads the teacher's probability over its runner-up tokens.")
    student_layers: int | None = Field(None, gt=0, description="Keep only N evenly spaced transformer blocks of "
                                       "model (first and last included) to make a smaller student of the teacher's "
                                       "family (task distill or classification); null: the student is model as is.")
    positions: Literal["answer", "all"] = Field(
        "answer", description="Where the KL term is taken. answer: the answer tokens only. all: every next-token "
        "position inside each example, prompt included (never padding, never across packed examples), the "
        "per-token mean KL weighted like the answer cross-entropy, which stays on the answer tokens; it passes "
        "the teacher's view of the whole text to the student, most useful for a cut-down student.")


BUNDLED_GENERAL_TEXT = str(Path(__file__).resolve().parents[2] / "data" / "general" / "general_text.jsonl")


class EvalConfig(Section):
    baseline: bool = Field(True, description="Evaluate the base model on the same examples and prompt.")
    max_examples: int | None = Field(None, gt=0, description="Seeded subset of the test split.")
    batch_size: int = Field(32, gt=0, description="Prompts per generation or scoring batch (measured on CPU: 32 "
                            "generates 15% faster than 16). Generation batches also stay within 8192 prompt plus "
                            "new tokens; scoring keeps logits only where the choices are.")
    max_new_tokens: int = Field(128, gt=0)
    forgetting_text: str | None = Field(
        BUNDLED_GENERAL_TEXT, description="task pretrain: general text ({\"text\": ...} rows) whose perplexity is "
        "measured before and after training, to see how much general ability continued pretraining costs "
        "(metrics.json: forgetting). Default: the bundled data/general/general_text.jsonl; null: off.")
    slices: list[str] = Field([], description="Fields of the test rows' meta to break the metrics down by in the "
                              "model card (tunelab models register), next to the label and the data.mix source.")


class AugmentConfig(Section):
    """`tunelab data augment`: paraphrases and word edits of each row's input, answers and labels kept."""

    paraphrases: int = Field(1, ge=0, description="Paraphrases asked for per row (0: none).")
    ops: list[Literal["swap", "delete"]] = Field([], description="Cheap word edits, one copy per edit per "
                                                 "row: swap (random pairs of words exchanged), delete (random "
                                                 "words removed).")
    ops_per_row: int = Field(1, gt=0, description="Word pairs swapped, or words deleted, in each edited copy "
                             "(fewer when the text is too short; at least one word always remains).")
    model: str | None = Field(None, description="Paraphrasing model: embedded name, local folder or Hugging Face "
                              "id (null: smollm2-135m); with server, the model name sent to it (null: the "
                              "first one the server lists).")
    server: str | None = Field(None, pattern=r"^https?://", description="Base URL of an OpenAI-compatible "
                               "chat-completions server (e.g. http://localhost:8000/v1); null: run the model "
                               "locally.")
    api_key: str | None = Field(None, repr=False, description="Bearer key for the server; null: the "
                                "OPENAI_API_KEY environment variable, if set.")
    instruction: str = Field(
        "Rewrite the following text in different words. Keep its meaning. Reply with the rewritten text "
        "only.\n\nText: {text}", description="The user message asking for a paraphrase; {text} is filled in.")
    temperature: float = Field(0.8, gt=0, le=2, description="Sampling temperature of the paraphrases.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling: the smallest set of tokens whose "
                         "probabilities add up to this.")
    max_new_tokens: int = Field(128, gt=0, description="Longest paraphrase, in tokens.")
    batch_size: int = Field(16, gt=0, description="Prompts per local generation batch.")
    min_length_ratio: float = Field(0.3, gt=0, description="Paraphrases with fewer words than this times the "
                                    "source's are quarantined as too short.")
    max_length_ratio: float = Field(3.0, gt=1, description="Paraphrases with more words than this times the "
                                    "source's are quarantined as too long.")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one server reply.")
    workers: int = Field(4, gt=0, description="Server requests in flight at once.")
    seed: int = Field(42, description="Seed for the word edits and for sampling paraphrases.")

    @model_validator(mode="after")
    def _check(self):
        if self.paraphrases == 0 and not self.ops:
            raise ValueError("nothing to do: ask for paraphrases (above 0) or ops (swap, delete)")
        if "{text}" not in self.instruction:
            raise ValueError("instruction must contain {text}")
        if self.min_length_ratio >= 1:
            raise ValueError("min_length_ratio must be below 1")
        return self


class SynthConfig(Section):
    """`tunelab data synth`: documents -> chunks -> retrieval -> generated, support-checked pairs."""

    kind: Literal["qa", "instruction"] = Field("qa", description="qa: question/answer pairs; instruction: "
                                               "instruction/response pairs.")
    pairs_per_chunk: int = Field(1, ge=1, le=10, description="Pairs asked for per seed chunk, in one generation.")
    model: str = Field("smollm2-135m", description="Generator: embedded name, local folder or Hugging Face id; "
                       "with server, the model name sent to the server.")
    server: str | None = Field(None, description="Base URL of an OpenAI-compatible chat-completions server "
                               "(e.g. http://localhost:8000/v1); null: run the model locally.")
    embedding_model: str = Field("minilm-l6", description="Sentence encoder for retrieval and the support check.")
    chunk_words: int = Field(150, ge=20, description="Largest chunk, in words; cut at paragraph and sentence ends.")
    chunk_overlap_words: int = Field(30, ge=0, description="Words a chunk repeats from the end of the one before.")
    context_chunks: int = Field(2, ge=0, description="Most similar other chunks (cosine) added as context.")
    max_chunks: int | None = Field(None, gt=0, description="Seeded random subset of seed chunks; null: all.")
    min_support: float = Field(0.5, ge=0, le=1, description="Keep a pair only if the cosine between its answer "
                               "and the closest one- or two-sentence window of its source chunk reaches "
                               "this; 0 turns the check off.")
    min_overlap: float = Field(0.6, ge=0, le=1, description="Keep a pair only if this share of its answer's "
                               "content words occurs in its source chunk; 0 turns the check off.")
    min_relevance: float = Field(0.3, ge=0, le=1, description="Keep a pair only if the cosine between its "
                                 "question and its answer reaches this; 0 turns the check off.")
    max_new_tokens: int = Field(96, gt=0, description="Generation budget per pair asked for.")
    batch_size: int = Field(8, gt=0, description="Prompts per local generation batch.")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one server reply.")
    seed: int = Field(42, description="Seed for the chunk subset and for generation.")

    @model_validator(mode="after")
    def _check(self):
        if self.chunk_overlap_words >= self.chunk_words:
            raise ValueError("chunk_overlap_words must be smaller than chunk_words")
        return self


class SweepParameter(Section):
    """One searched config key of ``tunelab sweep``: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: int | float | None = Field(None, description="Smallest value (float, int).")
    high: int | float | None = Field(None, description="Largest value (float, int).")
    log: bool = Field(False, description="Sample on a log scale (float, int); low must be above 0.")
    step: int | float | None = Field(None, gt=0, description="Spacing of the values (float, int); null: any "
                                     "float, every int.")
    choices: list[str | int | float | bool | None] | None = Field(
        None, min_length=1, description="The values to choose from (categorical).")

    @model_validator(mode="after")
    def _check(self):
        ranged = {"low": self.low, "high": self.high, "log": self.log or None, "step": self.step}
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs choices: [...]")
            if any(v is not None for v in ranged.values()):
                raise ValueError("categorical takes choices only, not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high (and log or step), not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log needs low above 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("int needs whole numbers for low, high and step")
        return self


class SweepConfig(Section):
    """``tunelab sweep``: hyperparameter search with optuna; every trial is a normal run."""

    metric: str = Field("tuned.accuracy", pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+$",
                        description="Key path into a trial's metrics.json, e.g. tuned.accuracy, tuned.f1, tuned.loss.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Whether a higher or a lower "
                                                       "metric is better.")
    trials: int = Field(20, gt=0, description="Trials one `tunelab sweep` call runs (--trials overrides); calling "
                        "it again adds trials to the same study.")
    pruning: bool = Field(True, description="Stop a trial whose logged loss (train.early_stopping's validation "
                          "loss where it evaluates, else training loss; not train.val_loss's curve, whose steps "
                          "depend on each trial's length) is worse than the median of earlier trials at the same "
                          "step (optuna MedianPruner).")
    pruning_startup_trials: int = Field(5, ge=0, description="Trials that finish before any trial is pruned.")
    pruning_warmup_steps: int = Field(0, ge=0, description="Steps of every trial that are never pruned.")
    storage: str | None = Field(None, description="Database URL of the study (e.g. postgresql://user@host/db) so "
                                "several machines share it; null: the SQLite file sweep.db in the sweep folder.")
    space: dict[str, SweepParameter] = Field({}, description="Config key (as in key=value overrides) -> its "
                                             "search range, e.g. train.learning_rate: {type: float, low: 1.0e-5, "
                                             "high: 1.0e-3, log: true}.")


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
    distill: DistillConfig = DistillConfig()
    eval: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    output_dir: str = "runs"

    @property
    def data_seed(self) -> int:
        """The seed that picks the data (splits, subsets): data.seed, or train.seed when that is null."""
        return self.train.seed if self.data.seed is None else self.data.seed

    @model_validator(mode="after")
    def _check_distill_teacher(self):
        if self.task == "distill" and not self.distill.teacher:
            raise ValueError("task distill needs distill.teacher (a model folder, Hugging Face id, embedded name "
                             "or tunelab run folder whose vocabulary the student shares)")
        return self

    @model_validator(mode="after")
    def _check_early_stopping(self):
        data = self.data
        if not self.train.early_stopping or data.val_fraction:
            return self
        if data.mix:
            without_val = [f"data.mix source {source.name}" for source in data.mix if not source.val]
        else:
            without_val = [] if data.val else ["data.train"]
        if without_val:
            raise ValueError(f"train.early_stopping needs validation rows, but {', '.join(without_val)} has none: "
                             "set data.val_fraction above 0, or give a val file")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def setting_value(config: BaseModel, key: str):
    """The value at a dotted key such as train.curriculum."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def setting_default(key: str):
    section, name = key.split(".")
    return RunConfig.model_fields[section].annotation.model_fields[name].get_default(call_default_factory=True)


def task_problems(config: RunConfig) -> list[str]:
    """Settings the chosen task would ignore, methods it cannot train, and trackers (train.report_to) this
    machine cannot log to, one line each."""
    support = TASKS[config.task]
    problems = config.train.missing_trackers()
    if config.method not in support.methods:
        problems.append(f"method: task {config.task} supports method {', '.join(support.methods)}; got {config.method}")
    for key in TASK_SETTINGS:
        if key in support.settings or setting_value(config, key) == setting_default(key):
            continue
        tasks = [task for task, other in TASKS.items() if key in other.settings]
        problems.append(f"{key}: set for task {config.task}, but settings of this kind apply to task "
                        f"{' or '.join(tasks)} only; remove it or choose "
                        f"{'that task' if len(tasks) == 1 else 'one of those tasks'}")
    if config.task == "classification":
        data = config.data
        if not (data.test or data.val or data.test_fraction or data.val_fraction
                or any(source.test or source.val for source in data.mix or [])):
            problems.append("data.test: classification needs test (or val) rows to evaluate on; set data.test or "
                            "data.test_fraction above 0")
    return problems


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
        problems.extend(task_problems(config))
    except ValidationError as exc:
        problems.extend(_format_errors(exc))
        problems.extend(_task_problems_of_the_valid_rest(data, exc))
    data_section = data.get("data") or {}
    if require_train_data and not (data_section.get("train") or data_section.get("mix")):
        problems.append("data.train: required (a training file; set it in the config or as data.train=FILE, "
                        "or several files with weights as data.mix)")
    if problems:
        raise ConfigError(problems, source)
    return config


def _task_problems_of_the_valid_rest(data: dict, exc: ValidationError) -> list[str]:
    """The task's problems among the settings that did validate, so they are listed with the others."""
    bad = [tuple(str(part) for part in err["loc"][:2]) for err in exc.errors() if err["loc"]]
    if any(loc[0] in ("task", "method") for loc in bad):
        return []
    rest = copy.deepcopy(data)
    for loc in bad:  # drop each invalid setting (or a whole section that is not a mapping)
        section = rest.get(loc[0])
        if len(loc) == 2 and isinstance(section, dict):
            section.pop(loc[1], None)
        else:
            rest.pop(loc[0], None)
    try:
        config = RunConfig.model_validate(rest)
    except ValidationError:
        return []
    invalid = {".".join(loc) for loc in bad}
    return [p for p in task_problems(config) if p.split(":")[0] not in invalid]


def validate_section(section: type[Section], values: dict, source: str) -> Section:
    """A section built from plain values (a command's flags), every problem reported at once."""
    try:
        return section.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source) from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
