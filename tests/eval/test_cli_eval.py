"""tunelab eval on classification runs (a head on a tiny random Llama), alone and as an ensemble."""

import json

import pytest

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.train.classify import run_classification


@pytest.fixture
def split_files(tmp_path, sentiment_file):
    rows = sentiment_file.read_text().splitlines(keepends=True)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(rows[:44]))
    test.write_text("".join(rows[44:]))
    return train, test


def train_classifier(tmp_path, model_dir, train, test, name, method):
    config = load_config(None, [f"model={model_dir}", f"data.train={train}", f"data.test={test}",
                                "data.val_fraction=0", f"output_dir={tmp_path / 'runs'}", f"run_name={name}",
                                "task=classification", f"method={method}", "train.max_steps=12",
                                "train.batch_size=4", "train.learning_rate=1e-2", "train.logging_steps=4",
                                "train.save_steps=100", "train.max_length=32", "train.precision=fp32",
                                "eval.batch_size=8"])
    return run_classification(config), str(tmp_path / "runs" / name)


def test_eval_of_a_classification_run_reproduces_its_own_test_metrics(tmp_path, tiny_model_dir, split_files):
    train, test = split_files
    trained, run_dir = train_classifier(tmp_path, tiny_model_dir, train, test, "cls-lora", "lora")
    out = tmp_path / "eval"
    assert main(["eval", "--model", run_dir, "--data", str(test), "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    # Same head, same test rows: the trained arm scores exactly as at the end of training, and the base
    # arm is the untrained head the run started from (same seed).
    for arm in ("tuned", "base"):
        assert metrics[arm]["accuracy"] == trained[arm]["accuracy"]
        assert metrics[arm]["confusion_matrix"] == trained[arm]["confusion_matrix"]
        assert metrics[arm]["loss"] == pytest.approx(trained[arm]["loss"], rel=1e-4)
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert len(rows) == 16 and {"tuned_prediction", "base_prediction", "tuned_confidence"} <= set(rows[0])


def test_an_ensemble_of_classification_runs(tmp_path, tiny_model_dir, split_files, capsys):
    train, test = split_files
    _, lora_run = train_classifier(tmp_path, tiny_model_dir, train, test, "cls-lora", "lora")
    full_metrics, full_run = train_classifier(tmp_path, tiny_model_dir, train, test, "cls-full", "full")
    out = tmp_path / "ensemble"
    assert main(["eval", "--model", lora_run, "--model", full_run, "--ensemble", "mean", "--data", str(test),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cls-full"]["accuracy"] == full_metrics["tuned"]["accuracy"]
    assert {"accuracy", "f1", "ece"} <= set(metrics["ensemble"])
    printed = capsys.readouterr().out
    assert "cls-lora" in printed and "cls-full" in printed and "ensemble" in printed

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "hi", "completion": "positive"}) + "\n")
    assert main(["eval", "--model", lora_run, "--model", full_run, "--ensemble", "vote", "--data", str(chat)]) == 2
    assert "classification run; it evaluates text/label rows" in capsys.readouterr().err
