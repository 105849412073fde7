"""train.val_loss: a validation loss on a capped, fixed val subset at intervals, as val_loss rows in train_log.jsonl."""

import json
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from tunelab.config import load_config
from tunelab.train import validation_curve
from tunelab.train.fit import JsonlLogCallback, forget_logged_steps_after
from tunelab.train.sft import run_sft
from tunelab.train.validation_curve import ValidationCurve, fixed_subset, interval


def tiny_config(tmp_path, model_dir, data, *extra):
    # 60 rows, val_fraction 0.1: 6 val rows
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              "train.max_steps=12", "train.batch_size=2", "train.learning_rate=1e-2",
                              "train.logging_steps=2", "train.save_steps=100", "train.max_length=64",
                              "train.precision=fp32", "eval.max_examples=4", "eval.max_new_tokens=2",
                              "eval.baseline=false", *extra])


def log_rows(tmp_path, run_name):
    return [json.loads(line) for line in (tmp_path / "runs" / run_name / "train_log.jsonl").open()]


def test_a_run_logs_validation_loss_by_default_on_a_fixed_capped_subset(tmp_path, tiny_model_dir, sentiment_file,
                                                                       monkeypatch):
    seen = []  # the examples each point's loss was taken on
    default_loss = validation_curve.causal_lm_validation_loss

    def spying_loss(config, pad_token_id):
        loss_fn = default_loss(config, pad_token_id)

        def spy(model, examples):
            seen.append([(tuple(e.input_ids), tuple(e.labels)) for e in examples])
            return loss_fn(model, examples)
        return spy

    monkeypatch.setattr(validation_curve, "causal_lm_validation_loss", spying_loss)
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=curve", "train.max_steps=13",
                         "train.logging_steps=1", "data.val_fraction=0.2", "eval.max_examples=8",
                         "train.val_loss.max_examples=3")
    metrics = run_sft(config)

    rows = log_rows(tmp_path, "curve")
    val_rows = [row for row in rows if "val_loss" in row]
    # auto: ceil(13 steps / 10) = every 2 steps, and the last step
    assert [row["step"] for row in val_rows] == [2, 4, 6, 8, 10, 12, 13]
    assert all(set(row) == {"step", "epoch", "val_loss", "tokens"} for row in val_rows)
    train_tokens = {row["step"]: row["tokens"] for row in rows if "loss" in row}
    assert all(row["tokens"] == train_tokens[row["step"]] for row in val_rows)  # the training rows' count
    assert val_rows[-1]["tokens"] == metrics["train"]["tokens"]
    # 12 val rows, 8 of them evaluated (eval.max_examples), capped to the same 3 at every point
    assert metrics["data"]["val"] == 12 and len(seen) == 7
    assert len(seen[0]) == 3 and all(examples == seen[0] for examples in seen)
    assert (tmp_path / "runs" / "curve" / "training_curve.png").exists()


def test_with_early_stopping_its_evaluations_are_the_curve(tmp_path, tiny_model_dir, sentiment_file):
    run_sft(tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=es", "train.max_steps=7",
                        "train.early_stopping={patience: 100, eval_steps: 3}"))
    val_rows = [row for row in log_rows(tmp_path, "es") if "val_loss" in row]
    assert [row["step"] for row in val_rows] == [3, 6, 7]  # early stopping's points only, none twice
    assert all(row["tokens"] > 0 for row in val_rows)


@pytest.mark.parametrize("setting, val_rows", [("train.val_loss=null", 6), ("data.val_fraction=0", 0),
                                               ("train.early_stopping={patience: 2}", 6)])
def test_no_curve_when_off_without_val_rows_or_with_early_stopping(tmp_path, setting, val_rows):
    config = load_config(None, ["data.train=x.jsonl", setting])
    assert ValidationCurve.from_config(config, ["val row"] * val_rows, 0, tmp_path) is None


def test_a_run_without_the_curve_logs_no_validation_loss(tmp_path, tiny_model_dir, sentiment_file):
    run_sft(tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=no-curve", "train.val_loss=null",
                        "train.max_steps=2", "train.logging_steps=1"))
    rows = log_rows(tmp_path, "no-curve")
    assert rows and not any("val_loss" in row for row in rows)


def test_auto_interval_gives_about_ten_points():
    assert [interval("auto", steps) for steps in (1, 10, 11, 12, 100, 101, 250)] == [1, 1, 2, 2, 10, 11, 25]
    assert interval(7, 250) == 7
    config = load_config(None, ["data.train=x.jsonl", "train.val_loss.every_steps=7"])
    assert ValidationCurve.from_config(config, ["val row"], 0, Path("run")).every_steps == 7


def test_tokens_of_a_step_repeat_the_per_step_counts_past_their_end():
    """fit_padded counts one epoch's steps; a second epoch trains them again."""
    log = JsonlLogCallback(Path("unused.jsonl"), [1, 2, 3])
    assert [log.tokens_until(step) for step in (0, 1, 3, 4, 7)] == [0, 1, 6, 7, 13]
    assert JsonlLogCallback(Path("unused.jsonl"), []).tokens_until(5) == 0


def test_the_subset_is_seeded_and_keeps_the_order():
    examples = list(range(100))
    subset = fixed_subset(examples, 10, seed=3)
    assert subset == fixed_subset(examples, 10, seed=3) == sorted(subset) and len(set(subset)) == 10
    assert subset != fixed_subset(examples, 10, seed=4)
    assert fixed_subset(examples[:4], 10, seed=3) == [0, 1, 2, 3]


def test_a_run_stopped_early_gets_a_last_point_and_resume_forgets_later_points(tmp_path):
    losses = iter([3.0, 2.0, 1.5])
    curve = ValidationCurve(3, lambda model: next(losses), tmp_path / "train_log.jsonl")
    curve.log.tokens_per_step = [10] * 8
    state, control = TrainerState(max_steps=8), TrainerControl()
    curve.on_train_begin(None, state, control)
    for _ in range(7):  # another callback stops training at step 7
        state.global_step += 1
        curve.on_step_end(None, state, control, model=None)
    curve.on_train_end(None, state, control, model=None)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").open()]
    assert [(row["step"], row["val_loss"], row["tokens"]) for row in rows] == [(3, 3.0, 30), (6, 2.0, 60),
                                                                               (7, 1.5, 70)]
    # Not in Trainer's log history: a sweep's pruning reports the same kind of loss at a step in every trial.
    assert state.log_history == []
    forget_logged_steps_after(tmp_path / "train_log.jsonl", 6)  # resumed from checkpoint-6
    assert [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").open()] == [3, 6]

    resumed = ValidationCurve(3, lambda model: pytest.fail("no step was trained"), tmp_path / "train_log.jsonl")
    resumed.on_train_begin(None, state, control)  # resumed at its last step: nothing new to log
    resumed.on_train_end(None, state, control, model=None)
