"""``tunelab eval``: score a run (tuned vs its base), a plain model, or an ensemble of them on any data file.

A run folder is loaded the way it was trained: a causal LM (its base plus ``adapter/``, or ``model/``),
for ``task: seq2seq`` an encoder-decoder model scored as the recipe scores it at the end of training,
or, for ``task: classification``, a sequence-classification model with the run's trained head and
label set (``adapter/`` or ``model/`` with ``labels.json``). Several ``--model`` with ``--ensemble``
are scored one member at a time, so only one member is in memory at once (see eval/ensemble.py).
"""

from __future__ import annotations

import gc
import random
from pathlib import Path

import numpy as np

from tunelab.data.formats import common_kind, read_records
from tunelab.data.records import Record
from tunelab.data.templates import label_choices
from tunelab.errors import TunelabError
from tunelab.eval import ensemble as ens
from tunelab.eval.classifier import evaluate_classifier
from tunelab.eval.seq2seq import seq2seq_arm, seq2seq_eval_task
from tunelab.eval.suite import EvalTask, build_eval_task, causal_lm_arm, evaluate_arms, prediction_rows
from tunelab.inference.classifier import encode
from tunelab.inference.scoring import choice_probabilities
from tunelab.inference.seq2seq import generate_targets, score_targets
from tunelab.io import atomic_write_json
from tunelab.modeling.precision import autocast_like
from tunelab.runs.folder import RunFolder
from tunelab.runs.load import LoadedModel, load_model
from tunelab.runs.report import comparison_table
from tunelab.security import files as sealed


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
    else:
        metrics, task, arms = evaluate_one(models[0], records, kind, baseline, data)
    metrics["data"] = {"file": data, "examples": len(records), "quarantined": len(rejected)}
    out_dir = output_folder(models, data, out, ensemble)
    atomic_write_json(out_dir / "metrics.json", metrics)
    sealed.write_jsonl(out_dir / "predictions.jsonl", prediction_rows(task, arms))
    print(comparison_table(metrics, arms=list(arms)) if ensemble else comparison_table(metrics))
    print(f"wrote {out_dir / 'metrics.json'} and predictions.jsonl")
    return metrics


def output_folder(models: list[str], data: str, out: str | None, ensemble: str | None) -> Path:
    """Where ``tunelab eval`` writes: ``out``, else eval-<data> inside the run folder (or here)."""
    if out:
        return Path(out)
    if ensemble:
        return Path(".") / f"eval-ensemble-{Path(data).stem}"
    return (Path(models[0]) if RunFolder.is_run(models[0]) else Path(".")) / f"eval-{Path(data).stem}"


def evaluate_one(model: str, records: list[Record], kind: str, baseline: bool, data: str,
                 ) -> tuple[dict, EvalTask, dict]:
    """Metrics, the task and per-arm predictions of one run (tuned and, optionally, base) or plain model."""
    loaded = load_model(model)
    config = loaded.config
    # The command line decides the baseline; a plain model has no base to compare with.
    baseline = baseline and loaded.run is not None
    if loaded.classifier:
        return evaluate_classifier_run(loaded, records, kind, baseline, data, model)
    choices = loaded.labels or label_choices(records, kind)
    if loaded.seq2seq:
        check_has_targets(kind, data, model)
        task = seq2seq_eval_task(loaded.tokenizer, records, records, kind, choices, config)
        evaluate = seq2seq_arm(loaded.tokenizer, task, config)
    else:
        task = build_eval_task(loaded.tokenizer, records, records, kind, choices, config.data.label_prompt,
                               config.data.system_prompt, config.train.max_length)
        evaluate = causal_lm_arm(loaded.tokenizer, task, config)
    metrics, arms = evaluate_arms(loaded.model, evaluate, baseline, loaded.load_base)
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


def evaluate_classifier_run(loaded: LoadedModel, records: list[Record], kind: str, baseline: bool, data: str,
                            who: str) -> tuple[dict, EvalTask, dict]:
    """A classification run on text/label rows: its untrained start (base) and its trained head (tuned)."""
    check_labels_known(records, kind, loaded.labels, data, who)
    label2id = {label: i for i, label in enumerate(loaded.labels)}
    features = encode(loaded.tokenizer, records, label2id, loaded.config.train.max_length, loaded.inputs)

    def evaluate(model, arm: str) -> tuple[dict, list[dict]]:
        return evaluate_classifier(model, loaded.tokenizer, features, loaded.labels, loaded.config.eval.batch_size)

    metrics, arms = evaluate_arms(loaded.model, evaluate, baseline, loaded.load_base)
    task = EvalTask("labeled", [r.text for r in records], [], [r.label for r in records], loaded.labels, [], records)
    return metrics, task, arms


def member_labels(path: str, records: list[Record], kind: str, data: str) -> list[str] | None:
    """A member's label set without loading it: a run's own, else the data's (None for free text)."""
    if not RunFolder.is_run(path):
        return label_choices(records, kind)
    run = RunFolder(path)
    config = run.config()
    labels = run.labels(config)
    if config.task == "classification":
        check_labels_known(records, kind, labels, data, path)
    return labels or label_choices(records, kind)


def evaluate_ensemble(models: list[str], records: list[Record], kind: str, method: str, data: str,
                      ) -> tuple[dict, EvalTask, dict]:
    """Every member and the ensemble as arms side by side; members are loaded and scored one at a time."""
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
    task = EvalTask(kind, inputs, [], references, labels, [], records)
    return metrics, task, arms


def seq2seq_member_outputs(loaded: LoadedModel, records: list[Record], kind: str, labels: list[str] | None, name: str):
    """An encoder-decoder member's [examples, labels] probabilities (columns in the order of ``labels``),
    each label scored as the whole target as in the seq2seq recipe, or its greedy answers for free text."""
    config, tokenizer, model = loaded.config, loaded.tokenizer, loaded.model
    own = loaded.labels or labels
    task = seq2seq_eval_task(tokenizer, records, [], kind, own, config)
    model.eval()
    with autocast_like(model):
        if labels is None:
            return generate_targets(model, tokenizer, task.prompts, config.eval.max_new_tokens,
                                            config.eval.batch_size, config.train.max_length, desc=f"{name}: generating")
        scores = score_targets(model, tokenizer, task.prompts, own, config.eval.batch_size,
                                       config.train.max_length, desc=f"{name}: scoring")
    probs = np.array([choice_probabilities(s) for s in scores], dtype=np.float64)
    return probs[:, [own.index(label) for label in labels]]
