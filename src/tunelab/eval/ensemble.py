"""Ensembles for ``tunelab eval``: several models judged as one, next to each of its members.

Label tasks: every member gives each example a probability per label (a causal LM scores each label
as the assistant's answer, a classification run's head gives softmax probabilities). ``mean``
averages the members' probabilities; ``vote`` takes the label most members pick, ties broken by the
mean probability. Free-text tasks: ``vote`` takes the most common normalized generation, ties going
to the earliest member; free text has no probabilities to average, so ``mean`` is refused.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.eval.metrics import label_arm, normalize_answer, text_metrics
from tunelab.eval.suite import build_eval_task
from tunelab.inference.classifier import encode, predict_probabilities
from tunelab.inference.generate import generate
from tunelab.inference.scoring import choice_probabilities, score_choices
from tunelab.modeling.precision import autocast_like

ENSEMBLE = "ensemble"
METHODS = ("vote", "mean")
RESERVED_NAMES = (ENSEMBLE, "data")  # other top-level keys of metrics.json


# ---- combining members


def mean_labels(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[members, examples, labels] -> (label ids, confidence): the argmax of the mean probabilities."""
    mean = member_probs.mean(axis=0)
    return mean.argmax(axis=1), mean.max(axis=1)


def vote_labels(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[members, examples, labels] -> (label ids, confidence): the label most members pick.

    Labels with equally many votes are told apart by their mean probability. The confidence is the
    mean probability of the chosen label, so calibration is measured the same way as for ``mean``.
    """
    members, examples, labels = member_probs.shape
    votes = np.eye(labels)[member_probs.argmax(axis=2)].sum(axis=0)  # [examples, labels]
    mean = member_probs.mean(axis=0)
    tied = votes == votes.max(axis=1, keepdims=True)
    chosen = np.where(tied, mean, -np.inf).argmax(axis=1)
    return chosen, mean[np.arange(examples), chosen]


def vote_text(member_outputs: list[list[str]]) -> list[str]:
    """[members][examples] generations -> the most common one per example, compared after normalizing.

    Ties go to the answer of the earliest member among the tied ones; that member's text is returned.
    """
    chosen = []
    for answers in zip(*member_outputs):
        keys = [normalize_answer(a) for a in answers]
        counts = Counter(keys)
        top = max(counts.values())
        chosen.append(next(a for a, k in zip(answers, keys) if counts[k] == top))
    return chosen


# ---- members and their outputs


def member_names(paths: list[str]) -> list[str]:
    """One name per member, from its run folder (or model) name, made unique."""
    names: list[str] = []
    for path in paths:
        stem = Path(path).name or str(path)
        name, n = stem, 2
        while name in names or name in RESERVED_NAMES:
            name, n = f"{stem}-{n}", n + 1
        names.append(name)
    return names


def shared_labels(label_sets: dict[str, list[str] | None]) -> list[str] | None:
    """The label set every member shares (the first member's order), or None when all answer free text."""
    sets = list(label_sets.values())
    if all(s is None for s in sets):
        return None
    first = sets[0]
    if any(s is None or set(s) != set(first) for s in sets):
        described = "; ".join(f"{name}: {sorted(s) if s is not None else 'free text'}"
                              for name, s in label_sets.items())
        raise TunelabError(f"ensemble members must share one label set, and these differ ({described}); "
                           f"ensemble runs trained on the same labels")
    return list(first)


def inputs_and_references(records: list[Record]) -> tuple[list[str], list[str]]:
    """Each example's input text and reference answer (its label, or the last assistant turn)."""
    inputs, references = [], []
    for record in records:
        if record.kind == "labeled":
            inputs.append(record.text)
            references.append(record.label)
            continue
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        inputs.append(record.messages[last - 1]["content"] if last else "")
        references.append(record.messages[last]["content"])
    return inputs, references


def label_probabilities(loaded, records: list[Record], kind: str, labels: list[str], desc: str) -> np.ndarray:
    """[examples, labels] probabilities of one member, columns in the order of ``labels``.

    ``loaded`` is a model loaded by ``tunelab eval`` (its config, tokenizer, model, own label order).
    """
    own = loaded.labels or labels
    config = loaded.config
    if loaded.classifier:
        label2id = {label: i for i, label in enumerate(own)}
        features = encode(loaded.tokenizer, records, label2id, config.train.max_length, loaded.inputs)
        probs = predict_probabilities(loaded.model, loaded.tokenizer, features, config.eval.batch_size)
    else:
        task = build_eval_task(loaded.tokenizer, records, [], kind, own, config.data.label_prompt,
                               config.data.system_prompt, config.train.max_length)
        loaded.model.eval()
        with autocast_like(loaded.model):
            scores = score_choices(loaded.model, loaded.tokenizer, task.prompts, own, config.eval.batch_size, desc=desc)
        probs = np.array([choice_probabilities(s) for s in scores], dtype=np.float64)
    return probs[:, [own.index(label) for label in labels]]


def generations(loaded, records: list[Record], kind: str, desc: str) -> list[str]:
    """One member's greedy answers to every example."""
    config = loaded.config
    task = build_eval_task(loaded.tokenizer, records, [], kind, None, config.data.label_prompt,
                           config.data.system_prompt, config.train.max_length)
    loaded.model.eval()
    with autocast_like(loaded.model):
        return generate(loaded.model, loaded.tokenizer, task.prompts, config.eval.max_new_tokens,
                        config.eval.batch_size, desc=desc)


# ---- scoring members and the ensemble as arms


def label_ensemble(member_probs: dict[str, np.ndarray], labels: list[str], references: list[str],
                   method: str) -> tuple[dict, dict]:
    """Metrics and predictions of each member and of their ensemble, keyed by arm name."""
    metrics, arms = {}, {}
    for name, probs in member_probs.items():
        metrics[name], arms[name] = label_arm([labels[i] for i in probs.argmax(axis=1)], probs.max(axis=1).tolist(),
                                              references, labels)
    combine = mean_labels if method == "mean" else vote_labels
    ids, confidence = combine(np.stack(list(member_probs.values())))
    metrics[ENSEMBLE], arms[ENSEMBLE] = label_arm([labels[i] for i in ids], confidence.tolist(), references, labels)
    return metrics, arms


def text_ensemble(member_outputs: dict[str, list[str]], references: list[str]) -> tuple[dict, dict]:
    """Generation metrics of each member and of the voted answers, keyed by arm name."""
    outputs = {**member_outputs, ENSEMBLE: vote_text(list(member_outputs.values()))}
    metrics = {name: text_metrics(references, out) for name, out in outputs.items()}
    arms = {name: [{"prediction": o, "correct": None} for o in out] for name, out in outputs.items()}
    return metrics, arms
