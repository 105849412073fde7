"""Sequence-classification recipe: setup -> train -> evaluate (untrained head vs tuned) -> save and report.

A task-specific head (AutoModelForSequenceClassification) goes on an encoder such as the embedded
``minilm-l6`` or on a decoder, one output per label of the train split. Texts are tokenized once,
padded per batch, and batches group texts of similar length. The loss is cross-entropy, optionally
weighted by inverse class frequency. The base arm is the same model before training: a fresh head
guesses at chance level, which is the honest baseline for a head that did not exist before.

``train.early_stopping`` stops on the head's mean cross-entropy over the val split and keeps the best
weights (train/early_stopping.py). With ``data.mix`` every metric is reported per source as well
(``metrics[arm]["by_source"][name]``), from the same test predictions. With ``distill.teacher`` the
head learns a teacher classifier's class probabilities as well as the labels, and the teacher is
scored on the same test texts (train/distill_labels.py); ``distill.student_layers`` cuts the model
to a smaller student, with or without a teacher.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from transformers import DataCollatorWithPadding

from tunelab.config import RunConfig
from tunelab.data.dataset import Splits
from tunelab.data.mixing import source_of
from tunelab.errors import TunelabError
from tunelab.eval.classifier import evaluate_classifier
from tunelab.eval.suite import EvalTask
from tunelab.inference.classifier import TARGETS, encode, heldout_loss
from tunelab.io import atomic_write_json
from tunelab.modeling.load import load_classifier, model_inputs
from tunelab.modeling.methods import parameter_counts
from tunelab.modeling.precision import autocast_like
from tunelab.train.distill_labels import LabelDistillationLoss, distills_labels, load_label_teacher, with_teacher_logits
from tunelab.train.early_stopping import EarlyStopping
from tunelab.train.fit import SealedTrainer, finish_run, fit_padded
from tunelab.train.setup import cap_examples, start_run, with_method, write_data_summary
from tunelab.train.validation_curve import ValidationCurve


class ClassWeightedLoss:
    """Cross-entropy of the head's logits against the labels, optionally weighted per class; summed."""

    def __init__(self, weights: list[float] | None = None):
        self.weights = torch.tensor(weights, dtype=torch.float32) if weights else None

    def __call__(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = targets["labels"]
        weight = self.weights.to(labels.device) if self.weights is not None else None
        return F.cross_entropy(logits, labels, weight=weight, reduction="sum")


class ClassifierTrainer(SealedTrainer):
    """Trainer whose loss is ``loss_fn(fp32 logits, targets) -> summed loss`` (no other behaviour changes).

    ``targets`` are the batch's ``labels`` and, for distillation, its ``teacher_logits``. The summed
    losses are divided by the number of examples in the whole accumulated batch. Balanced class
    weights average 1 over the train split, so the loss keeps its usual scale.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn or ClassWeightedLoss()
        # Make Trainer count examples over the whole accumulated batch for every model type.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = {key: inputs.pop(key) for key in TARGETS if key in inputs}
        with autocast_like(model):
            outputs = model(**inputs)
        total = self.loss_fn(outputs.logits.float(), targets)
        count = num_items_in_batch if num_items_in_batch is not None else len(targets["labels"])
        loss = total / count
        return (loss, outputs) if return_outputs else loss


def train_labels(splits: Splits) -> list[str]:
    """The label set the head predicts: every label of the train split; others are refused."""
    labels = sorted({r.label for r in splits.train})
    if len(labels) < 2:
        raise TunelabError(f"classification needs at least two labels in the train split; found {labels}")
    unseen = sorted({r.label for r in splits.val + splits.test} - set(labels))
    if unseen:
        raise TunelabError(f"labels {unseen} appear in val/test but never in the train split, so the head "
                           f"cannot predict them; add training rows for them or drop those rows")
    return labels


def class_weights(label_ids: list[int], num_labels: int, mode: str) -> list[float] | None:
    """Inverse-frequency weights n / (k * count) per class for mode "balanced"; None for "none"."""
    if mode == "none":
        return None
    weights = compute_class_weight("balanced", classes=np.arange(num_labels), y=np.asarray(label_ids))
    return [float(w) for w in weights]


def run_classification(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback. With
    ``distill.teacher`` the head also learns the teacher's class probabilities (train/distill_labels.py)."""
    # ---- setup: the teacher first, so a wrong teacher fails before a run folder exists (the method and
    # the test rows were checked with the config: config.task_problems)
    teacher = load_label_teacher(config.distill.teacher) if distills_labels(config) else None

    def load(config: RunConfig, splits: Splits):
        if teacher:
            teacher.check_labels(train_labels(splits))
        return load_classifier(config, train_labels(splits))

    run = start_run(config, resume, overwrite, kinds=("labeled",), load=load,
                    hint='classification needs text/label rows ({"text": ..., "label": ...})')
    splits, tokenizer, length = run.splits, run.tokenizer, config.train.max_length
    labels = [run.model.config.id2label[i] for i in range(run.model.config.num_labels)]
    label2id = {label: i for i, label in enumerate(labels)}
    inputs = model_inputs(run.model)
    features = encode(tokenizer, splits.train, label2id, length, inputs)
    weights = class_weights([f["labels"] for f in features], len(labels), config.classification.class_weights)
    loss_fn = ClassWeightedLoss(weights)
    if teacher:  # its logits on the training texts, once: it is frozen
        features = with_teacher_logits(features, teacher.logits(splits.train, labels, length, config.eval.batch_size))
        loss_fn = LabelDistillationLoss(config.distill.alpha, config.distill.temperature, loss_fn)
    extra = {"class_weights": {label: round(w, 4) for label, w in zip(labels, weights)}} if weights else {}
    data_summary = write_data_summary(run.folder, splits, labels=labels, **extra)
    test = cap_examples(splits.test or splits.val, config)
    test_features = encode(tokenizer, test, label2id, length, inputs)
    sources = [source_of(r) for r in test] if splits.mixing else None  # data.mix: metrics per source too
    val_features = encode(tokenizer, cap_examples(splits.val, config), label2id, length, inputs)

    def val_loss(model, val):  # mean cross-entropy of the head
        return heldout_loss(model, tokenizer, val, config.eval.batch_size)

    stopper = EarlyStopping.from_config(config, val_features, tokenizer.pad_token_id, run.run_dir, val_loss)
    curve = ValidationCurve.from_config(config, val_features, tokenizer.pad_token_id, run.run_dir, val_loss)
    model, counts = with_method(run.model, config, task_type="SEQ_CLS")
    for param in model.parameters():  # a bf16 base still trains its adapters and head in fp32
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()

    # ---- evaluate the base first: the model before training, on the same test examples
    metrics, arms = {}, {}
    if config.eval.baseline:
        metrics["base"], arms["base"] = evaluate_classifier(model, tokenizer, test_features, labels,
                                                            config.eval.batch_size, sources)

    # ---- train
    train_metrics = fit_padded(model, tokenizer, features, DataCollatorWithPadding(tokenizer), ClassifierTrainer,
                               loss_fn, config, run.folder, resume,
                               [*callbacks, *(c for c in (stopper, curve) if c)]) | counts
    if stopper:  # the best weights are back in the model
        train_metrics |= stopper.summary()

    # ---- evaluate the tuned model
    metrics["tuned"], arms["tuned"] = evaluate_classifier(model, tokenizer, test_features, labels,
                                                          config.eval.batch_size, sources)
    if teacher:  # the teacher as a third arm, on the same test texts
        metrics["teacher"], arms["teacher"] = teacher.evaluate(test, labels, length, config.eval.batch_size, sources)
        train_metrics |= {"teacher": teacher.name, "teacher_params": parameter_counts(teacher.model)["total_params"],
                          "alpha": config.distill.alpha, "temperature": config.distill.temperature}
    if config.distill.student_layers:
        train_metrics["student_layers"] = config.distill.student_layers

    # ---- save and report (fit_padded saved the weights; the label set goes beside them)
    atomic_write_json(run.folder.weights_dir_for(config.method) / "labels.json",
                      {"labels": labels, "label2id": label2id, "class_weights": weights})
    task = EvalTask("labeled", [r.text for r in test], [], [r.label for r in test], labels, [], test)
    return finish_run(run.folder, metrics | {"train": train_metrics, "data": data_summary}, task, arms)
