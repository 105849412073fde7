"""Label-level distillation: a classification student learns its teacher classifier's class probabilities.

With ``task: classification`` and ``distill.teacher`` set, the loss per example is

    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, label)

over the classes, where _T is the softmax at temperature T (Hinton et al., 2015) and the CE is
class-weighted as in plain classification. Only class probabilities meet, so teacher and student may
differ in tokenizer and architecture: a decoder classifier can teach an encoder, and an encoder can
teach a cut of itself (``distill.student_layers``). The teacher is a finished classification run, or
a sequence-classification model (folder, hub id), whose labels include the student's. It is frozen,
so its logits on the training texts are computed once before training and travel with each example
(offline distillation): a training step costs what a plain classification step costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from tunelab.config import RunConfig
from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.eval.classifier import arm_metrics
from tunelab.inference.classifier import encode, predict_logits, softmax_probabilities
from tunelab.model_files import config_options, resolve_model
from tunelab.modeling.load import load_tokenizer, model_inputs
from tunelab.modeling.sealed_weights import from_pretrained
from tunelab.runs.folder import RunFolder
from tunelab.runs.load import load_run
from tunelab.train.distill import soft_kl_sum


@dataclass
class LabelTeacher:
    name: str
    tokenizer: object
    model: object
    labels: list[str]  # the teacher head's outputs, in order
    inputs: list[str]  # tokenizer outputs its forward takes

    def logits(self, records: list[Record], labels: list[str], max_length: int, batch_size: int) -> np.ndarray:
        """[records, len(labels)] teacher logits for the records' texts, columns in the order of ``labels``.

        A teacher with more labels than the student is restricted to the student's: the softmax over
        those columns is the teacher's distribution conditioned on the student's label set.
        """
        label2id = {label: i for i, label in enumerate(self.labels)}
        features = encode(self.tokenizer, records, label2id, max_length, self.inputs)
        logits = predict_logits(self.model, self.tokenizer, features, batch_size)
        return logits[:, [label2id[label] for label in labels]]

    def evaluate(self, records: list[Record], labels: list[str], max_length: int, batch_size: int,
                 sources: list[str] | None = None) -> tuple[dict, list[dict]]:
        """The teacher scored as an arm on ``records``, over the student's labels: metrics and predictions."""
        probs = softmax_probabilities(self.logits(records, labels, max_length, batch_size))
        reference_ids = np.array([labels.index(r.label) for r in records])
        return arm_metrics(probs, reference_ids, labels, sources)

    def check_labels(self, labels: list[str]) -> None:
        missing = sorted(set(labels) - set(self.labels))
        if missing:
            raise TunelabError(f"teacher {self.name} predicts labels {self.labels}, but the student's data also has "
                               f"{missing}; label-level distillation needs a teacher that knows every student label")


def distills_labels(config: RunConfig) -> bool:
    return config.task == "classification" and bool(config.distill.teacher) and config.distill.alpha > 0


def load_label_teacher(name: str) -> LabelTeacher:
    """A frozen, eval-mode classifier: a classification run folder, or a sequence-classification model."""
    if RunFolder.is_run(name):
        loaded = load_run(Path(name).expanduser())
        if not loaded.classifier:
            raise TunelabError(f"teacher {name} is a task {loaded.config.task} run; a classification student needs "
                               f"a classifier as teacher (a run of task classification)")
        tokenizer, model, labels = loaded.tokenizer, loaded.model, loaded.labels
    else:
        folder = resolve_model(name)
        model_config = AutoConfig.from_pretrained(folder, **config_options(folder))
        architectures = model_config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise TunelabError(f"teacher {name} is not a sequence classifier ({', '.join(architectures) or 'no head'}); "
                               f"use a classification run folder or a model with a classification head")
        tokenizer = load_tokenizer(folder)
        model = from_pretrained(AutoModelForSequenceClassification, folder)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    model.requires_grad_(False)
    return LabelTeacher(name, tokenizer, model.eval(), list(labels), model_inputs(model))


def with_teacher_logits(features: list[dict], teacher_logits: np.ndarray) -> list[dict]:
    """The training features, each with its teacher logits (a list of floats, one per student label)."""
    return [{**feature, "teacher_logits": row.tolist()} for feature, row in zip(features, teacher_logits)]


class LabelDistillationLoss:
    """``loss_fn`` for ClassifierTrainer: summed alpha * T^2 * KL + (1 - alpha) * class-weighted CE."""

    def __init__(self, alpha: float, temperature: float, hard: Callable[[torch.Tensor, dict], torch.Tensor]):
        self.alpha, self.temperature, self.hard = alpha, temperature, hard

    def __call__(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        teacher = targets["teacher_logits"].to(logits.device, torch.float32)
        total = self.alpha * self.temperature ** 2 * soft_kl_sum(logits, teacher, self.temperature)
        if self.alpha < 1:
            total = total + (1 - self.alpha) * self.hard(logits, targets)
        return total
