"""Ensembles: vote and mean on hand-built probabilities, free-text votes, and tunelab eval end to end."""

import json

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.eval.cli_eval import evaluate_cli
from tunelab.eval.ensemble import mean_labels, member_names, shared_labels, vote_labels, vote_text
from tunelab.train.sft import run_sft

# [members, examples, labels]
PROBS = np.array([
    [[0.90, 0.10, 0.00], [0.40, 0.60, 0.00], [0.20, 0.25, 0.55], [0.60, 0.40, 0.00]],
    [[0.60, 0.40, 0.00], [0.45, 0.55, 0.00], [0.10, 0.80, 0.10], [0.10, 0.85, 0.05]],
    [[0.00, 0.30, 0.70], [1.00, 0.00, 0.00], [0.30, 0.10, 0.60], [0.20, 0.10, 0.70]],
])


def test_mean_takes_the_argmax_of_the_averaged_probabilities():
    ids, confidence = mean_labels(PROBS)
    # Means per example: [.5, .2667, .2333], [.6167, .3833, 0], [.2, .3833, .4167], [.3, .45, .25].
    assert ids.tolist() == [0, 0, 2, 1]
    assert confidence == pytest.approx([0.5, 1.85 / 3, 1.25 / 3, 0.45])


def test_vote_takes_the_majority_and_breaks_ties_by_mean_probability():
    ids, confidence = vote_labels(PROBS)
    # Member argmaxes: (0, 0, 2), (1, 1, 0), (2, 1, 2), (0, 1, 2): the last is a three-way tie, which the
    # mean probabilities (.3, .45, .25) settle for label 1. Example 1 is where vote and mean disagree.
    assert ids.tolist() == [0, 1, 2, 1]
    assert confidence == pytest.approx([0.5, 1.15 / 3, 1.25 / 3, 0.45])


def test_a_two_two_vote_goes_to_the_pair_with_the_higher_mean():
    probs = np.array([[[0.51, 0.49]], [[0.51, 0.49]], [[0.05, 0.95]], [[0.40, 0.60]]])
    ids, confidence = vote_labels(probs)
    assert ids.tolist() == [1]  # 2 votes each; mean 0.3675 vs 0.6325
    assert confidence == pytest.approx([0.6325])


def test_free_text_vote_normalizes_answers_and_ties_go_to_the_first_member():
    members = [["Paris", "blue", "one"],
               ["paris.", "red", "two"],
               ["Lyon", "red", "three"],
               ["The Paris", "blue", "four"]]
    # "Paris" wins 3 to 1; blue/red tie 2-2, blue comes from the first member; all differ: the first.
    assert vote_text(members) == ["Paris", "blue", "one"]


def test_members_must_share_a_label_set_and_get_unique_names():
    assert shared_labels({"a": ["neg", "pos"], "b": ["pos", "neg"]}) == ["neg", "pos"]
    assert shared_labels({"a": None, "b": None}) is None
    with pytest.raises(TunelabError, match="must share one label set"):
        shared_labels({"a": ["neg", "pos"], "b": ["neg", "neutral", "pos"]})
    with pytest.raises(TunelabError, match="b: free text"):
        shared_labels({"a": ["neg", "pos"], "b": None})
    assert member_names(["runs/a", "other/a", "runs/ensemble"]) == ["a", "a-2", "ensemble-2"]


def train_run(tmp_path, model_dir, data, name, *extra):
    config = load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                                f"run_name={name}", "train.max_steps=6", "train.batch_size=2",
                                "train.logging_steps=3", "train.save_steps=100", "train.max_length=64",
                                "train.precision=fp32", "lora.r=4", "eval.batch_size=8", "eval.baseline=false",
                                *extra])
    run_sft(config)
    return str(tmp_path / "runs" / name)


def test_an_ensemble_of_two_runs_is_scored_next_to_its_members(tmp_path, tiny_model_dir, sentiment_file):
    run_a = train_run(tmp_path, tiny_model_dir, sentiment_file, "a", "train.learning_rate=1e-2")
    run_b = train_run(tmp_path, tiny_model_dir, sentiment_file, "b", "train.learning_rate=3e-3", "train.seed=7")
    out = tmp_path / "ensemble"
    assert main(["eval", "--model", run_a, "--model", run_b, "--ensemble", "vote", "--data", str(sentiment_file),
                 "--out", str(out), "--max-examples", "12"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"a", "b", "ensemble", "data"} <= set(metrics)
    for arm in ("a", "b", "ensemble"):
        assert {"accuracy", "precision", "recall", "f1", "ece", "confusion_matrix"} <= set(metrics[arm])
        assert sum(map(sum, metrics[arm]["confusion_matrix"]["matrix"])) == 12
    assert metrics["ensemble"]["method"] == "vote" and metrics["ensemble"]["members"] == {"a": run_a, "b": run_b}

    rows = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert len(rows) == 12
    for row in rows:
        assert {"a_prediction", "b_prediction", "ensemble_prediction", "ensemble_confidence"} <= set(row)
        if row["a_prediction"] == row["b_prediction"]:  # agreeing members are the majority
            assert row["ensemble_prediction"] == row["a_prediction"]
    # A member inside the ensemble scores exactly as the same run evaluated on its own.
    alone = evaluate_cli(run_a, str(sentiment_file), str(tmp_path / "alone"), 12, baseline=False)
    assert alone["tuned"]["accuracy"] == metrics["a"]["accuracy"]
    assert alone["tuned"]["ece"] == pytest.approx(metrics["a"]["ece"], abs=1e-6)
    alone_rows = [json.loads(line) for line in (tmp_path / "alone" / "predictions.jsonl").open()]
    assert [r["tuned_prediction"] for r in alone_rows] == [r["a_prediction"] for r in rows]

    mean = evaluate_cli([run_a, run_b], str(sentiment_file), str(tmp_path / "mean"), 12, ensemble="mean")
    assert mean["a"] == metrics["a"] and mean["b"] == metrics["b"] and mean["ensemble"]["method"] == "mean"
    for row in (json.loads(line) for line in (tmp_path / "mean" / "predictions.jsonl").open()):
        if row["a_prediction"] == row["b_prediction"]:
            assert row["ensemble_prediction"] == row["a_prediction"]


def test_ensemble_refusals_are_one_clear_line(tmp_path, tiny_model_dir, sentiment_file, capsys):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i}"}) + "\n"
                            for i in range(4)))
    model = str(tiny_model_dir)
    assert main(["eval", "--model", model, "--model", model, "--ensemble", "mean", "--data", str(chat)]) == 2
    err = capsys.readouterr().err
    assert "free text" in err and "use --ensemble vote" in err
    assert main(["eval", "--model", model, "--model", model, "--data", str(chat)]) == 2
    assert "add --ensemble vote or --ensemble mean" in capsys.readouterr().err
    assert main(["eval", "--model", model, "--ensemble", "vote", "--data", str(chat)]) == 2
    assert "at least two --model" in capsys.readouterr().err


def test_free_text_vote_of_two_plain_models(tmp_path, tiny_model_dir):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i}"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "out"
    model = str(tiny_model_dir)
    metrics = evaluate_cli([model, model], str(chat), str(out), None, ensemble="vote")
    name = tiny_model_dir.name
    assert set(metrics) == {name, f"{name}-2", "ensemble", "data"}
    assert {"exact_match", "f1", "rouge_l", "bleu"} <= set(metrics["ensemble"])
    rows = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    # Two copies of one model answer alike, so the vote is their answer.
    assert all(r[f"{name}_prediction"] == r[f"{name}-2_prediction"] == r["ensemble_prediction"] for r in rows)
