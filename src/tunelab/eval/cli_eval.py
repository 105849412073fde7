"""``tunelab eval``: score a run (tuned vs its base), a plain model, or an ensemble of them on any data file.

A run folder is loaded the way it was trained: a causal LM (its base plus ``adapter/``, or ``model/``),
for ``task: seq2seq`` an encoder-decoder model scored as the recipe scores it at the end of training,
or, for ``task: classification``, a sequence-classification model with the run's trained head and
label set (``adapter/`` or ``model/`` with ``labels.json``). Several ``--model`` with ``--ensemble``
are scored one member at a time, so only one member is in memory at once (see eval/ensemble.py).
"""

from __future__ import annotations

import gc
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunelab.config import RunConfig
from tunelab.data.formats import common_kind, read_records
from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.eval.suite import EvalTask, build_eval_task, evaluate_arms, label_choices, prediction_rows
from tunelab.io import atomic_write_json, atomic_write_jsonl
from tunelab.report import comparison_table


@dataclass
class Loaded:
    """A model ready to evaluate, with what its evaluation needs."""

    config: RunConfig
    tokenizer: object
    model: object  # a run's tuned model, or the plain model
    load_base: Callable[[], object] | None  # a run's base model when ``model`` is not an adapter over it
    labels: list[str] | None  # the run's label set; None for free text or a plain model
    classifier: bool = False
    inputs: list[str] | None = None  # tokenizer outputs a classifier's forward takes
    seq2seq: bool = False  # an encoder-decoder model (task: seq2seq run, or a plain T5/BART)


def read_run_config(run_dir: Path) -> RunConfig:
    return RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))


def saved_weights(run_dir: Path) -> Path:
    for name in ("adapter", "model"):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise TunelabError(f"run folder {run_dir} has no adapter/ or model/; did the run finish?")


def classifier_labels(saved: Path) -> list[str]:
    path = saved / "labels.json"
    if not path.exists():
        raise TunelabError(f"{path} is missing: a classification run saves its label set there; did the run finish?")
    return json.loads(path.read_text(encoding="utf-8"))["labels"]


def run_labels(run_dir: Path, config: RunConfig) -> list[str] | None:
    """The label set a run was trained on, read from its files without loading the model."""
    if config.task == "classification":
        return classifier_labels(saved_weights(run_dir))
    summary_path = run_dir / "data_summary.json"
    return json.loads(summary_path.read_text(encoding="utf-8")).get("labels") if summary_path.exists() else None


def is_run(path: str) -> bool:
    return (Path(path) / "config.yaml").exists()


def load_model(name: str) -> Loaded:
    """A run folder (causal LM, seq2seq or classifier) or a plain model (folder, hub id or embedded name)."""
    from tunelab.train.setup import load_base

    if not is_run(name):
        config = RunConfig(model=name)
        if is_encoder_decoder(name):
            from tunelab.train.seq2seq import load_seq2seq

            config = RunConfig(model=name, task="seq2seq")
            return Loaded(config, *load_seq2seq(config), None, None, seq2seq=True)
        tokenizer, model = load_base(config)
        return Loaded(config, tokenizer, model, None, None)
    run_dir = Path(name)
    config = read_run_config(run_dir)
    saved = saved_weights(run_dir)
    if config.task == "classification":
        return load_classifier_run(config, saved)
    if config.task == "seq2seq":
        return load_seq2seq_run(config, saved, run_labels(run_dir, config))
    labels = run_labels(run_dir, config)
    if saved.name == "adapter":
        from tunelab.train.methods import load_adapter

        tokenizer, base = load_base(config)
        return Loaded(config, tokenizer, load_adapter(base, saved), None, labels)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.precision import pick_dtype

    tokenizer = AutoTokenizer.from_pretrained(saved)  # saved with the weights
    model = AutoModelForCausalLM.from_pretrained(saved, dtype=pick_dtype(config.train.precision, config.method))
    return Loaded(config, tokenizer, model, lambda: load_base(config)[1], labels)


def is_encoder_decoder(name: str) -> bool:
    from transformers import AutoConfig

    from tunelab.models import resolve_model

    return bool(getattr(AutoConfig.from_pretrained(resolve_model(name)), "is_encoder_decoder", False))


def load_seq2seq_run(config: RunConfig, saved: Path, labels: list[str] | None) -> Loaded:
    """A seq2seq run: its base (4-bit for qlora) with ``adapter/``, or the whole trained ``model/``."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tunelab.precision import pick_dtype
    from tunelab.train.methods import load_adapter
    from tunelab.train.seq2seq import load_seq2seq

    if saved.name == "adapter":
        tokenizer, base = load_seq2seq(config)
        return Loaded(config, tokenizer, load_adapter(base, saved), None, labels, seq2seq=True)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    model = AutoModelForSeq2SeqLM.from_pretrained(saved, dtype=pick_dtype(config.train.precision, config.method))
    return Loaded(config, tokenizer, model, lambda: load_seq2seq(config)[1], labels, seq2seq=True)


def load_classifier_run(config: RunConfig, saved: Path) -> Loaded:
    """The run's classifier: its base with the trained head (adapter/), or the whole trained model (model/).

    The base arm is the model the run started from: with the run's seed, the fresh head gets the same
    initial weights it had before training.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from tunelab.precision import pick_dtype
    from tunelab.train.methods import load_adapter
    from tunelab.train.classify import classifier_for_labels, model_inputs

    labels = classifier_labels(saved)

    def untrained():
        set_seed(config.train.seed)
        return classifier_for_labels(config, labels)[1]

    tokenizer = AutoTokenizer.from_pretrained(saved)
    if saved.name == "adapter":
        base = untrained()
        inputs = model_inputs(base)
        return Loaded(config, tokenizer, load_adapter(base, saved), None, labels, True, inputs)
    model = AutoModelForSequenceClassification.from_pretrained(
        saved, dtype=pick_dtype(config.train.precision, config.method))
    return Loaded(config, tokenizer, model, untrained, labels, True, model_inputs(model))


def evaluate_cli(models: str | list[str], data: str, out: str | None, max_examples: int | None,
                 baseline: bool = True, ensemble: str | None = None) -> dict:
    models = [models] if isinstance(models, str) else list(models)
    if len(models) > 1 and not ensemble:
        raise TunelabError(f"{len(models)} --model given: add --ensemble vote or --ensemble mean to evaluate them "
                           f"as one ensemble, or evaluate them one at a time")
    if ensemble and len(models) < 2:
        raise TunelabError("--ensemble needs at least two --model members")
    records, rejected = read_records(data, on_error="quarantine")
    kind = common_kind(records)
    if max_examples and len(records) > max_examples:
        records = random.Random(0).sample(records, max_examples)
    if ensemble:
        metrics, task, arms = evaluate_ensemble(models, records, kind, ensemble, data)
        default_out = Path(".") / f"eval-ensemble-{Path(data).stem}"
    else:
        metrics, task, arms = evaluate_one(models[0], records, kind, baseline, data)
        default_out = (Path(models[0]) if is_run(models[0]) else Path(".")) / f"eval-{Path(data).stem}"
    metrics["data"] = {"file": data, "examples": len(records), "quarantined": len(rejected)}
    out_dir = Path(out) if out else default_out
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_jsonl(out_dir / "predictions.jsonl", prediction_rows(task, arms))
    print(comparison_table(metrics, arms=list(arms)) if ensemble else comparison_table(metrics))
    print(f"wrote {out_dir / 'metrics.json'} and predictions.jsonl")
    return metrics


def evaluate_one(model: str, records: list[Record], kind: str, baseline: bool, data: str,
                 ) -> tuple[dict, EvalTask, dict]:
    """Metrics, the task and per-arm predictions of one run (tuned and, optionally, base) or plain model."""
    loaded = load_model(model)
    config = loaded.config
    if loaded.classifier:
        return evaluate_classifier_run(loaded, records, kind, baseline, data, model)
    choices = loaded.labels or label_choices(records, kind)
    # The command line decides the baseline; a plain model has no base to compare with.
    run = is_run(model)
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"baseline": run and baseline})})
    if loaded.seq2seq:
        from tunelab.train import seq2seq

        check_has_targets(kind, data, model)
        task = seq2seq.eval_task(loaded.tokenizer, records, records, kind, choices, config)
        metrics, arms = seq2seq.evaluate_arms(loaded.model, loaded.tokenizer, task, config)
        return metrics, task, arms
    task = build_eval_task(loaded.tokenizer, records, records, kind, choices, config.data.label_prompt,
                           config.data.system_prompt, config.train.max_length)
    metrics, arms = evaluate_arms(loaded.model, loaded.tokenizer, task, config, loaded.load_base)
    return metrics, task, arms


def check_has_targets(kind: str, data: str, who: str) -> None:
    if kind not in ("chat", "labeled"):
        raise TunelabError(f"{who} is an encoder-decoder (seq2seq) model; it evaluates prompt/completion, chat or "
                           f"text/label rows, and {data} holds {kind} rows")


def check_labels_known(records: list[Record], kind: str, labels: list[str], data: str, who: str) -> None:
    if kind != "labeled":
        raise TunelabError(f"{who} is a classification run; it evaluates text/label rows, and {data} holds "
                           f"{kind} rows")
    unknown = sorted({r.label for r in records} - set(labels))
    if unknown:
        raise TunelabError(f"{data} has labels {unknown} that {who} never learned (its labels: {labels}); "
                           f"drop those rows or evaluate a run trained on them")


def evaluate_classifier_run(loaded: Loaded, records: list[Record], kind: str, baseline: bool, data: str,
                            who: str) -> tuple[dict, EvalTask, dict]:
    """A classification run on text/label rows: its untrained start (base) and its trained head (tuned)."""
    from peft import PeftModel

    from tunelab.train.classify import encode, evaluate_classifier

    check_labels_known(records, kind, loaded.labels, data, who)
    label2id = {label: i for i, label in enumerate(loaded.labels)}
    features = encode(loaded.tokenizer, records, label2id, loaded.config.train.max_length, loaded.inputs)
    args = (loaded.tokenizer, features, loaded.labels, loaded.config.eval.batch_size)
    metrics, arms = {}, {}
    if baseline:
        if isinstance(loaded.model, PeftModel):
            with loaded.model.disable_adapter():
                metrics["base"], arms["base"] = evaluate_classifier(loaded.model, *args)
        else:
            metrics["base"], arms["base"] = evaluate_classifier(loaded.load_base(), *args)
    metrics["tuned"], arms["tuned"] = evaluate_classifier(loaded.model, *args)
    task = EvalTask("labeled", [r.text for r in records], [], [r.label for r in records], loaded.labels, [])
    return metrics, task, arms


def member_labels(path: str, records: list[Record], kind: str, data: str) -> list[str] | None:
    """A member's label set without loading it: a run's own, else the data's (None for free text)."""
    if not is_run(path):
        return label_choices(records, kind)
    run_dir = Path(path)
    config = read_run_config(run_dir)
    labels = run_labels(run_dir, config)
    if config.task == "classification":
        check_labels_known(records, kind, labels, data, path)
    return labels or label_choices(records, kind)


def evaluate_ensemble(models: list[str], records: list[Record], kind: str, method: str, data: str,
                      ) -> tuple[dict, EvalTask, dict]:
    """Every member and the ensemble as arms side by side; members are loaded and scored one at a time."""
    from tunelab.eval import ensemble as ens

    if kind == "text":
        raise TunelabError(f"{data} holds raw text rows without answers; an ensemble compares answers "
                           f"(text/label or chat rows)")
    names = ens.member_names(models)
    labels = ens.shared_labels({n: member_labels(m, records, kind, data) for n, m in zip(names, models)})
    if labels is None and method == "mean":
        raise TunelabError(f"--ensemble mean averages label probabilities, but the answers in {data} are free "
                           f"text; use --ensemble vote (the most common answer)")
    inputs, references = ens.inputs_and_references(records)
    if labels is not None:
        unknown = sorted(set(references) - set(labels))
        if unknown:
            raise TunelabError(f"{data} has answers {unknown} outside the members' labels {labels}")
    outputs = {}
    for name, model in zip(names, models):
        loaded = load_model(model)
        if loaded.seq2seq:
            outputs[name] = seq2seq_member_outputs(loaded, records, kind, labels, name)
        elif labels is not None:
            outputs[name] = ens.label_probabilities(loaded, records, kind, labels, desc=f"{name}: scoring")
        else:
            outputs[name] = ens.generations(loaded, records, kind, desc=f"{name}: generating")
        del loaded
        gc.collect()
    if labels is not None:
        metrics, arms = ens.label_ensemble(outputs, labels, references, method)
    else:
        metrics, arms = ens.text_ensemble(outputs, references)
    metrics[ens.ENSEMBLE] |= {"method": method, "members": dict(zip(names, models))}
    task = EvalTask(kind, inputs, [], references, labels, [])
    return metrics, task, arms


def seq2seq_member_outputs(loaded: Loaded, records: list[Record], kind: str, labels: list[str] | None, name: str):
    """An encoder-decoder member's [examples, labels] probabilities (columns in the order of ``labels``),
    each label scored as the whole target as in the seq2seq recipe, or its greedy answers for free text."""
    import numpy as np

    from tunelab.eval.evaluate import choice_probabilities
    from tunelab.precision import autocast_like
    from tunelab.train import seq2seq

    config, tokenizer, model = loaded.config, loaded.tokenizer, loaded.model
    own = loaded.labels or labels
    task = seq2seq.eval_task(tokenizer, records, [], kind, own, config)
    model.eval()
    with autocast_like(model):
        if labels is None:
            return seq2seq.generate_targets(model, tokenizer, task.prompts, config.eval.max_new_tokens,
                                            config.eval.batch_size, config.train.max_length, desc=f"{name}: generating")
        scores = seq2seq.score_targets(model, tokenizer, task.prompts, own, config.eval.batch_size,
                                       config.train.max_length, desc=f"{name}: scoring")
    probs = np.array([choice_probabilities(s) for s in scores], dtype=np.float64)
    return probs[:, [own.index(label) for label in labels]]
