"""Label-level distillation (task classification with distill.teacher) on a tiny random BERT."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tunelab.config import load_config
from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.inference.classifier import encode, predict_logits
from tunelab.modeling.load import model_inputs
from tunelab.runs.load import load_model
from tunelab.train.classification import ClassWeightedLoss, run_classification
from tunelab.train.distill import run_distill
from tunelab.train.distill_labels import LabelDistillationLoss, load_label_teacher


def config_for(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              "task=classification", "method=full", "train.max_steps=60", "train.batch_size=4",
                              "train.learning_rate=3e-3", "train.logging_steps=1", "train.save_steps=100",
                              "train.max_length=32", "eval.batch_size=4", *extra])


@pytest.fixture
def teacher_run(tmp_path, tiny_bert_dir, sentiment_file):
    metrics = run_classification(config_for(tmp_path, tiny_bert_dir, sentiment_file, "run_name=teacher"))
    assert metrics["tuned"]["accuracy"] == 1.0  # one word decides the label: a trained teacher knows it
    return tmp_path / "runs" / "teacher", metrics


def save_head_model(folder, model_dir, labels):
    """A sequence-classification model folder (random head) whose outputs are ``labels``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def test_loss_is_alpha_weighted_kl_at_temperature_plus_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    loss = LabelDistillationLoss(0.7, 2.0, ClassWeightedLoss([0.5, 2.0]))(
        logits, {"labels": labels, "teacher_logits": teacher})
    teacher_probs = F.softmax(teacher / 2, dim=-1)
    kl = (teacher_probs * (teacher_probs.log() - F.log_softmax(logits / 2, dim=-1))).sum()
    ce = (torch.tensor([0.5, 2.0, 2.0]) * F.cross_entropy(logits, labels, reduction="none")).sum()
    assert loss.item() == pytest.approx((0.7 * 4 * kl + 0.3 * ce).item(), rel=1e-6)


def test_teacher_logits_follow_the_student_label_order(tmp_path, tiny_bert_dir):
    folder = save_head_model(tmp_path / "teacher", tiny_bert_dir, ["positive", "neutral", "negative"])
    teacher = load_label_teacher(str(folder))
    records = [Record("labeled", text="the movie was great", label="positive"),
               Record("labeled", text="awful", label="negative")]
    raw = predict_logits(teacher.model, teacher.tokenizer,
                         encode(teacher.tokenizer, records, {"positive": 0, "neutral": 1, "negative": 2}, 32,
                                model_inputs(teacher.model)), 4)
    got = teacher.logits(records, ["negative", "positive"], 32, 4)
    np.testing.assert_allclose(got, raw[:, [2, 0]])
    with pytest.raises(TunelabError, match=r"also has \['mixed'\].*knows every student label"):
        teacher.check_labels(["mixed", "negative"])


def test_cut_student_learns_from_the_teacher_alone(tmp_path, tiny_bert_dir, sentiment_file, teacher_run):
    teacher_dir, teacher_metrics = teacher_run
    # alpha 1: the labels take no part, so whatever the student learns it learns from the teacher
    metrics = run_classification(config_for(tmp_path, tiny_bert_dir, sentiment_file, "run_name=student",
                                            f"distill.teacher={teacher_dir}", "distill.alpha=1.0",
                                            "distill.student_layers=1"))
    run_dir = tmp_path / "runs" / "student"
    assert metrics["teacher"]["accuracy"] == teacher_metrics["tuned"]["accuracy"]  # same teacher, same test texts
    assert metrics["train"]["teacher"] == str(teacher_dir) and metrics["train"]["student_layers"] == 1
    assert metrics["train"]["teacher_params"] > metrics["train"]["total_params"]  # the cut student is smaller
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    assert metrics["tuned"]["accuracy"] > metrics["base"]["accuracy"]
    assert json.loads((run_dir / "model" / "config.json").read_text())["num_hidden_layers"] == 1
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert {"teacher_prediction", "teacher_correct"} <= set(rows[0])

    # The run reloads (tunelab eval) as the same one-block classifier
    loaded = load_model(str(run_dir))
    assert loaded.classifier and loaded.model.config.num_hidden_layers == 1


def test_student_layers_cut_an_encoder_for_a_lora_run_and_its_reload(tmp_path, tiny_bert_dir, sentiment_file):
    config = config_for(tmp_path, tiny_bert_dir, sentiment_file, "run_name=cut", "method=lora",
                        "train.max_steps=2", "distill.student_layers=1")
    metrics = run_classification(config)  # no teacher: the cut student alone (the baseline arm)
    assert metrics["train"]["student_layers"] == 1 and "teacher" not in metrics
    loaded = load_model(str(tmp_path / "runs" / "cut"))
    assert len(loaded.model.get_base_model().bert.encoder.layer) == 1


def test_wrong_teachers_are_refused_before_a_run_folder_exists(tmp_path, tiny_bert_dir, sentiment_file, teacher_run):
    teacher_dir, _ = teacher_run
    bare = config_for(tmp_path, tiny_bert_dir, sentiment_file, "run_name=bare", f"distill.teacher={tiny_bert_dir}")
    with pytest.raises(TunelabError, match="not a sequence classifier"):
        run_classification(bare)
    few = save_head_model(tmp_path / "few", tiny_bert_dir, ["positive"])
    with pytest.raises(TunelabError, match=r"also has \['negative'\].*knows every student label"):
        run_classification(config_for(tmp_path, tiny_bert_dir, sentiment_file, "run_name=few",
                                      f"distill.teacher={few}"))
    token_level = load_config(None, [f"model={tiny_bert_dir}", f"data.train={sentiment_file}", "task=distill",
                                     f"output_dir={tmp_path / 'runs'}", "run_name=tokens",
                                     f"distill.teacher={teacher_dir}"])
    with pytest.raises(TunelabError, match="task: classification with distill.teacher"):
        run_distill(token_level)
    assert not any((tmp_path / "runs" / name).exists() for name in ("bare", "few", "tokens"))


def test_a_teacher_is_refused_for_tasks_that_do_not_distil(tmp_path):
    with pytest.raises(Exception, match="apply to task distill or classification only"):
        load_config(None, ["task=sft", "distill.teacher=runs/quickstart", "distill.student_layers=4"])
