"""tunelab eval on classification runs (a head on a tiny random Llama), alone and as an ensemble."""

import json

import pytest

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.train.classification import run_classification


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


# ---- seq2seq runs (a tiny random T5)

SEQ2SEQ_METHODS = {"lora": 1e-2, "prompt": 3e-1, "freeze": 3e-3}


@pytest.fixture(scope="module")
def seq2seq_runs(tmp_path_factory, tiny_t5_dir):
    """A 2-layer, 32-wide T5 tuned with an adapter (lora), virtual tokens (prompt) and as a whole model (freeze)."""
    from tunelab.train.seq2seq import run_seq2seq

    root = tmp_path_factory.mktemp("seq2seq-eval")
    words = [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative"),
             ("fun", "positive"), ("boring", "negative")]
    rows = [json.dumps({"text": f"the movie was {w}", "label": label}) + "\n" for w, label in words * 8]
    (root / "train.jsonl").write_text("".join(rows[:36]))
    (root / "test.jsonl").write_text("".join(rows[36:]))
    runs = {}
    for method, learning_rate in SEQ2SEQ_METHODS.items():
        config = load_config(None, [f"model={tiny_t5_dir}", f"data.train={root / 'train.jsonl'}",
                                    f"data.test={root / 'test.jsonl'}", "data.val_fraction=0",
                                    f"output_dir={root / 'runs'}", f"run_name=s2s-{method}", "task=seq2seq",
                                    f"method={method}", "train.max_steps=12", "train.batch_size=4",
                                    f"train.learning_rate={learning_rate}", "train.logging_steps=4",
                                    "train.save_steps=100", "train.max_length=32", "train.precision=fp32",
                                    "eval.batch_size=8", "lora.r=4", "prompt.num_virtual_tokens=4",
                                    "freeze.last_n_layers=1"])
        runs[method] = (run_seq2seq(config), str(root / "runs" / f"s2s-{method}"))
    return root, runs


@pytest.mark.parametrize("method", SEQ2SEQ_METHODS)
def test_eval_of_a_seq2seq_run_reproduces_its_own_test_metrics(tmp_path, seq2seq_runs, method, capsys):
    root, runs = seq2seq_runs
    trained, run_dir = runs[method]
    out = tmp_path / "eval"
    assert main(["eval", "--model", run_dir, "--data", str(root / "test.jsonl"), "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    # Same weights, same test rows, the recipe's own evaluation: both arms score as at the end of training.
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    for arm in ("base", "tuned"):
        assert set(metrics[arm]) == set(trained[arm])
        assert metrics[arm]["accuracy"] == trained[arm]["accuracy"]
        assert metrics[arm]["confusion_matrix"] == trained[arm]["confusion_matrix"]
        assert metrics[arm]["loss"] == pytest.approx(trained[arm]["loss"], rel=1e-4)
        assert metrics[arm]["ece"] == pytest.approx(trained[arm]["ece"], abs=1e-6)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert len(rows) == 12 and {"base_prediction", "tuned_prediction", "tuned_confidence"} <= set(rows[0])
    printed = capsys.readouterr().out
    assert "base" in printed and "tuned" in printed


def test_a_plain_t5_is_evaluated_as_seq2seq(tmp_path, tiny_t5_dir):
    data = tmp_path / "copy.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the movie was {w}", "completion": f"a {w} movie"}) + "\n"
                            for w in ["great", "dull", "fun"]))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_t5_dir), "--data", str(data), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "base" not in metrics and {"exact_match", "rouge_l", "loss"} <= set(metrics["tuned"])


def test_an_ensemble_of_seq2seq_runs(tmp_path, seq2seq_runs):
    root, runs = seq2seq_runs
    out = tmp_path / "ensemble"
    members = [runs["lora"][1], runs["freeze"][1]]
    assert main(["eval", "--model", members[0], "--model", members[1], "--ensemble", "mean",
                 "--data", str(root / "test.jsonl"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("lora", "freeze"):  # each member scores its labels exactly as its own run did
        assert metrics[f"s2s-{method}"]["accuracy"] == runs[method][0]["tuned"]["accuracy"]
        assert metrics[f"s2s-{method}"]["ece"] == pytest.approx(runs[method][0]["tuned"]["ece"], abs=1e-6)
    assert {"accuracy", "f1", "ece"} <= set(metrics["ensemble"])
