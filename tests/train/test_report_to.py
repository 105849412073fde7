"""train.report_to: Trainer also logs to the user's trackers, inside the run folder, next to train_log.jsonl.

TensorBoard is installed with the dev extra, so a tiny run's event files are read back and compared with
train_log.jsonl. MLflow and W&B are not: their config checks run with a simulated missing package.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tunelab.config import TASKS, load_config
from tunelab.errors import ConfigError
from tunelab.train.fit import training_arguments
from tunelab.train.recipes import train


def tiny_run(tmp_path, model_dir, data, run_name, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              f"run_name={run_name}", "train.max_steps=6", "train.batch_size=2",
                              "train.logging_steps=2", "train.save_steps=100", "train.max_length=64",
                              "train.learning_rate=1e-2", "train.precision=fp32", "eval.max_examples=4",
                              "eval.batch_size=8", "eval.max_new_tokens=2", *extra])


def tensorboard_losses(folder) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


def logged_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


@pytest.mark.parametrize("task", ["sft", "classification"])  # the two fit loops: packed and padded
def test_tensorboard_logs_the_training_loss_of_train_log_into_the_run_folder(task, tmp_path, tiny_model_dir,
                                                                              tiny_bert_dir, sentiment_file):
    model, settings = (tiny_bert_dir, []) if task == "classification" else (tiny_model_dir, ["train.compile=false"])
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    for name in ("first", "second"):  # two runs in one process, as a sweep's trials are
        train(tiny_run(tmp_path, model, sentiment_file, name, f"task={task}", "train.report_to=[tensorboard]",
                       *settings))
    assert os.environ.get("TENSORBOARD_LOGGING_DIR") == before  # nothing leaks into the next run
    for name in ("first", "second"):
        run_dir = tmp_path / "runs" / name
        logged = logged_losses(run_dir)
        assert sorted(logged) == [1, 2, 4, 6]  # logging_first_step, then every logging_steps
        written = tensorboard_losses(run_dir / "tensorboard")
        assert sorted(written) == sorted(logged)
        for step, loss in logged.items():
            assert written[step] == pytest.approx(loss, rel=1e-4, abs=1e-4), step
        assert not (run_dir / "checkpoints" / "runs").exists()  # not Trainer's default place
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["first", "second"]


def test_without_trackers_trainer_reports_to_none(tmp_path, tiny_model_dir):
    config = load_config(None, [f"model={tiny_model_dir}", "run_name=plain"], require_train_data=False)
    assert config.train.report_to == []
    args = training_arguments(config, tmp_path / "checkpoints")
    assert args.report_to == [] and args.run_name == "plain"


def test_trackers_pass_through_to_trainer_once_each(tmp_path):
    config = load_config(None, ["run_name=named", "train.report_to=[tensorboard, tensorboard]"],
                         require_train_data=False)
    assert config.train.report_to == ["tensorboard"]
    args = training_arguments(config, tmp_path / "checkpoints")
    assert args.report_to == ["tensorboard"] and args.run_name == "named"
    assert load_config(None, ["train.report_to=tensorboard"], require_train_data=False).train.report_to == [
        "tensorboard"]


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_accepts_trackers(task):
    extra = ["distill.teacher=teacher-model"] if task == "distill" else []
    config = load_config(None, ["data.train=rows.jsonl", f"task={task}", "train.report_to=[tensorboard]", *extra])
    assert config.train.report_to == ["tensorboard"]


@pytest.fixture
def without_mlflow(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name.split(".")[0] == "mlflow"
                        else find_spec(name, *args))


@pytest.mark.parametrize("other,problem", [
    ("train.batch_size=0", "train.batch_size: "),  # a value the config refuses
    ("train.curriculum=length", "train.curriculum: set for task seq2seq"),  # a setting the task refuses
])
def test_an_uninstalled_tracker_is_reported_with_the_other_problems(other, problem, without_mlflow):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=rows.jsonl", "task=seq2seq", "train.report_to=[tensorboard, mlflow]", other])
    problems = info.value.problems
    assert "train.report_to: mlflow is not installed; pip install mlflow" in problems, problems
    assert any(p.startswith(problem) for p in problems), problems
    assert not any("tensorboard" in p for p in problems), problems  # installed: no problem


def test_an_unknown_tracker_is_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=rows.jsonl", "train.report_to=[tensorboard, comet]"])
    (problem,) = info.value.problems
    assert problem.startswith("train.report_to.1: ") and "'tensorboard', 'mlflow' or 'wandb'" in problem
