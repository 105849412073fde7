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

import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

from tunelab.config import RunConfig
from tunelab.data.dataset import Splits
from tunelab.data.mixing import source_of
from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.eval.metrics import expected_calibration_error, label_metrics
from tunelab.eval.suite import EvalTask, prediction_rows
from tunelab.io import atomic_write_json
from tunelab.models import resolve_model
from tunelab.precision import autocast_like, pick_dtype
from tunelab.train.common import (JsonlLogCallback, finish_run, optimizer_steps, train_and_measure,
                                  training_arguments)
from tunelab.train.early_stopping import EarlyStopping
from tunelab.train.lean_activations import use_lean_activations
from tunelab.train.methods import WHOLE_MODEL_METHODS, parameter_counts
from tunelab.train.setup import cap_examples, start_run, with_method, write_data_summary
from tunelab.train.student import keep_evenly_spaced_blocks

CLASSIFICATION_METHODS = ("full", "lora", "dora", "rslora")


class ClassWeightedLoss:
    """Cross-entropy of the head's logits against the labels, optionally weighted per class; summed."""

    def __init__(self, weights: list[float] | None = None):
        self.weights = torch.tensor(weights, dtype=torch.float32) if weights else None

    def __call__(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = targets["labels"]
        weight = self.weights.to(labels.device) if self.weights is not None else None
        return F.cross_entropy(logits, labels, weight=weight, reduction="sum")


class ClassifierTrainer(Trainer):
    """Trainer whose loss is ``loss_fn(fp32 logits, targets) -> summed loss`` (no other behaviour changes).

    ``targets`` are the batch's ``labels`` and, for distillation, its ``teacher_logits``. The summed
    losses are divided by the number of examples in the whole accumulated batch. Balanced class
    weights average 1 over the train split, so the loss keeps its usual scale.
    """

    loss_is_scaled_for_ga = True
    TARGETS = ("labels", "teacher_logits")

    def __init__(self, *args, loss_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn or ClassWeightedLoss()
        # Make Trainer count examples over the whole accumulated batch for every model type.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = {key: inputs.pop(key) for key in self.TARGETS if key in inputs}
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


def load_classifier(config: RunConfig, splits: Splits):
    """Tokenizer and a model with a fresh head of one output per label (frozen-weight dtype as SFT)."""
    return classifier_for_labels(config, train_labels(splits))


def classifier_for_labels(config: RunConfig, labels: list[str]):
    """Tokenizer and ``config.model`` with a fresh head whose outputs are ``labels``, in that order."""
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder heads read the last non-pad token, so the model config must know the pad id.
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id,
        dtype=pick_dtype(config.train.precision, config.method))
    if config.distill.student_layers:  # a smaller student, with or without its teacher (distill_labels.py)
        model = keep_evenly_spaced_blocks(model, config.distill.student_layers, config.model)
    use_lean_activations(model)  # decoders of the Llama family; encoders keep their modules
    return tokenizer, model


def model_inputs(model) -> list[str]:
    """The tokenizer outputs this model's forward takes (decoders take no token_type_ids)."""
    accepted = inspect.signature(model.forward).parameters
    return [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in accepted]


def encode(tokenizer, records: list[Record], label2id: dict[str, int], max_length: int,
           inputs: list[str]) -> list[dict]:
    """One feature dict per record: token ids cut at max_length, unpadded, with the label id."""
    if not records:
        return []
    encoded = tokenizer([r.text for r in records], truncation=True, max_length=max_length)
    keys = [k for k in inputs if k in encoded]
    return [{**{k: encoded[k][i] for k in keys}, "labels": label2id[r.label]} for i, r in enumerate(records)]


def fit_classifier(model, tokenizer, features: list[dict], loss_fn, config: RunConfig, run_dir: Path, resume: bool,
                   callbacks=()) -> dict:
    """Train with Trainer on length-grouped, dynamically padded batches; return training figures.

    ``loss_fn(logits, targets)`` is the summed loss of a micro-batch (ClassWeightedLoss, or label
    distillation's soft-and-hard loss when features carry ``teacher_logits``)."""
    args = training_arguments(config, run_dir / "checkpoints", total_steps=optimizer_steps(config, len(features)))
    args.train_sampling_strategy = "group_by_length"
    batch = config.train.batch_size * config.train.gradient_accumulation
    tokens = [len(f["input_ids"]) for f in features]
    tokens_per_step = [sum(tokens[i:i + batch]) for i in range(0, len(features), batch)]
    trainer = ClassifierTrainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(run_dir / "train_log.jsonl", tokens_per_step), *callbacks],
        loss_fn=loss_fn,
    )
    return train_and_measure(trainer, run_dir, resume, tokens_per_step) | {"examples": len(features)}


@torch.no_grad()
def predict_logits(model, tokenizer, features: list[dict], batch_size: int) -> np.ndarray:
    """Head logits [examples, labels] in fp32, batched over texts of similar length, in eval mode."""
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    logits = np.zeros((len(features), model.config.num_labels), dtype=np.float32)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = collate([{k: features[i][k] for k in features[i] if k not in ClassifierTrainer.TARGETS}
                          for i in chunk])
        with autocast_like(model):
            logits[chunk] = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu().numpy()
    return logits


def softmax_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the labels of fp32 logits [examples, labels], as float64."""
    return torch.softmax(torch.from_numpy(logits), dim=-1).double().numpy()


def predict_probabilities(model, tokenizer, features: list[dict], batch_size: int) -> np.ndarray:
    """Softmax probabilities [examples, labels] (float64), batched over texts of similar length."""
    return softmax_probabilities(predict_logits(model, tokenizer, features, batch_size))


def mean_loss(probs: np.ndarray, reference_ids: np.ndarray) -> float:
    """Mean cross-entropy (unweighted) of the reference labels under ``probs``."""
    reference_probs = np.clip(probs[np.arange(len(reference_ids)), reference_ids], 1e-12, 1.0)
    return float(-np.log(reference_probs).mean())


def heldout_loss(model, tokenizer, features: list[dict], batch_size: int) -> float:
    """Mean cross-entropy of ``model`` on ``features``, in eval mode; the mode is restored after."""
    was_training = model.training
    try:
        probs = predict_probabilities(model, tokenizer, features, batch_size)
    finally:
        model.train(was_training)
    return mean_loss(probs, np.array([f["labels"] for f in features]))


def probability_metrics(probs: np.ndarray, reference_ids: np.ndarray, labels: list[str]) -> tuple[dict, list[dict]]:
    """Label metrics, calibration and loss of predicted ``probs``, and the per-example predictions."""
    predicted_ids = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    references = [labels[i] for i in reference_ids]
    predicted = [labels[i] for i in predicted_ids]
    correct = [p == r for p, r in zip(predicted, references)]
    metrics = label_metrics(references, predicted, labels)
    metrics["ece"] = expected_calibration_error(confidence.tolist(), correct)
    metrics["loss"] = mean_loss(probs, reference_ids)
    predictions = [{"prediction": p, "correct": c, "confidence": round(float(conf), 4)}
                   for p, c, conf in zip(predicted, correct, confidence)]
    return metrics, predictions


def evaluate_classifier(model, tokenizer, features: list[dict], labels: list[str], batch_size: int,
                        sources: list[str] | None = None) -> tuple[dict, list[dict]]:
    """Label metrics, calibration and held-out loss for one arm, and its per-example predictions."""
    probs = predict_probabilities(model, tokenizer, features, batch_size)
    return arm_metrics(probs, np.array([f["labels"] for f in features]), labels, sources)


def arm_metrics(probs: np.ndarray, reference_ids: np.ndarray, labels: list[str],
                sources: list[str] | None = None) -> tuple[dict, list[dict]]:
    """``probability_metrics``, and with ``sources`` (data.mix: each example's source) the same per source
    as ``by_source``."""
    metrics, predictions = probability_metrics(probs, reference_ids, labels)
    if sources:
        metrics["by_source"] = {}
        for name in dict.fromkeys(sources):
            picked = np.array([i for i, source in enumerate(sources) if source == name])
            metrics["by_source"][name] = probability_metrics(probs[picked], reference_ids[picked], labels)[0]
    return metrics, predictions


def run_classification(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback. With
    ``distill.teacher`` the head also learns the teacher's class probabilities (train/distill_labels.py)."""
    from tunelab.train.distill_labels import (LabelDistillationLoss, distills_labels, load_label_teacher,
                                              with_teacher_logits)

    if config.method not in CLASSIFICATION_METHODS:
        raise TunelabError(f"task: classification supports method {', '.join(CLASSIFICATION_METHODS)}; "
                           f"got {config.method}")
    data = config.data
    if not (data.test or data.val or data.test_fraction or data.val_fraction):
        raise TunelabError("classification needs test (or val) rows to evaluate on; set data.test or "
                           "data.test_fraction above 0")
    # ---- setup: the teacher first, so a wrong teacher fails before a run folder exists
    teacher = load_label_teacher(config.distill.teacher) if distills_labels(config) else None

    def load(config: RunConfig, splits: Splits):
        if teacher:
            teacher.check_labels(train_labels(splits))
        return load_classifier(config, splits)

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
    data_summary = write_data_summary(run.run_dir, splits, labels=labels, **extra)
    test = cap_examples(splits.test or splits.val, config)
    test_features = encode(tokenizer, test, label2id, length, inputs)
    sources = [source_of(r) for r in test] if splits.mixing else None  # data.mix: metrics per source too
    val_features = encode(tokenizer, cap_examples(splits.val, config), label2id, length, inputs)
    stopper = EarlyStopping.from_config(config, val_features, tokenizer.pad_token_id, run.run_dir,
                                        lambda model, val: heldout_loss(model, tokenizer, val, config.eval.batch_size))
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
    train_metrics = fit_classifier(model, tokenizer, features, loss_fn, config, run.run_dir, resume,
                                   [*callbacks, stopper] if stopper else callbacks) | counts
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

    # ---- save and report
    out_dir = run.run_dir / ("model" if config.method in WHOLE_MODEL_METHODS else "adapter")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    atomic_write_json(out_dir / "labels.json", {"labels": labels, "label2id": label2id,
                                                "class_weights": weights})
    task = EvalTask("labeled", [r.text for r in test], [], [r.label for r in test], labels, [])
    return finish_run(run.run_dir, metrics | {"train": train_metrics, "data": data_summary},
                      prediction_rows(task, arms))
