"""tunelab sweep on a tiny random Llama: the study file, the summary, the best config, pruning, failures."""

import json

import optuna
import pytest
import yaml

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import ConfigError, TunelabError
from tunelab.sweep import as_override, run_sweep


def write_config(tmp_path, model_dir, data, sweep: dict, name="sweep") -> str:
    config = {
        "run_name": name, "model": str(model_dir), "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data)},
        "train": {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 100,
                  "max_length": 64, "precision": "fp32"},
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "eval": {"batch_size": 8},
        "sweep": sweep,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def load_study(sweep_dir, name="sweep"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'sweep.db'}")


def test_sweep_finds_the_best_trial_writes_summary_and_best_config_and_resumes(tmp_path, tiny_model_dir,
                                                                               sentiment_file):
    config_path = write_config(tmp_path, tiny_model_dir, sentiment_file, {
        "metric": "tuned.loss", "direction": "minimize", "pruning": False,
        "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                  "lora.r": {"type": "categorical", "choices": [2, 8]}}})
    run_sweep(config_path, trials=3)
    sweep_dir = tmp_path / "runs" / "sweep"

    study = load_study(sweep_dir)  # the study file reloads with optuna itself
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # Each trial is a normal run; its metrics.json holds the value the study recorded.
    losses = {}
    for trial in study.trials:
        run_dir = sweep_dir / f"trial-{trial.number}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert "base" not in metrics  # the base arm is the same in every trial and is skipped
        assert metrics["tuned"]["loss"] == pytest.approx(trial.value)
        trained = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert trained["train"]["learning_rate"] == pytest.approx(trial.params["train.learning_rate"])
        assert trained["lora"]["r"] == trial.params["lora.r"]
        losses[trial.number] = metrics["tuned"]["loss"]
    assert len(set(losses.values())) == 3  # the trials really differ
    best_number = min(losses, key=losses.get)
    assert study.best_trial.number == best_number

    best = load_config(sweep_dir / "best_config.yaml")  # ready for tunelab train
    best_params = study.best_trial.params
    assert best.train.learning_rate == pytest.approx(best_params["train.learning_rate"])
    assert best.lora.r == best_params["lora.r"]
    assert best.run_name == "sweep-best" and best.output_dir == str(tmp_path / "runs")
    assert best.eval.baseline is True and best.train.max_steps == 4

    summary = (sweep_dir / "sweep_summary.md").read_text()
    for trial in study.trials:
        assert f"| {trial.number} " in summary and f"{trial.value:.4f}" in summary
    assert f"Best: trial {best_number}" in summary

    # Resuming the same study from the command line adds trials; the sampler does not repeat itself.
    assert main(["sweep", config_path, "--trials", "1"]) == 0
    study = load_study(sweep_dir)
    assert len(study.trials) == 4 and study.trials[3].state == optuna.trial.TrialState.COMPLETE
    assert (sweep_dir / "trial-3" / "metrics.json").exists()
    assert study.trials[3].params != study.trials[0].params
    assert "| 3 " in (sweep_dir / "sweep_summary.md").read_text()


def test_a_bad_space_lists_every_problem_before_any_trial(tmp_path, tiny_model_dir, sentiment_file):
    config_path = write_config(tmp_path, tiny_model_dir, sentiment_file, {"space": {
        "train.learnin_rate": {"type": "float", "low": 1e-5, "high": 1e-3},
        "lora.rank": {"type": "categorical", "choices": [8, 16]},
        "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 1.5},
        "train.epochs": {"type": "int", "low": 1, "high": 3}}})
    with pytest.raises(ConfigError) as caught:
        run_sweep(config_path, trials=1)
    problems = caught.value.problems
    assert len(problems) == 3
    assert any("train.learnin_rate" in p and "unknown key" in p for p in problems)
    assert any("lora.rank" in p and "unknown key" in p for p in problems)
    assert any("train.warmup_ratio (value 1.5)" in p for p in problems)
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_sweep_section_with_a_malformed_parameter_is_refused(tmp_path, sentiment_file):
    with pytest.raises(ConfigError, match="categorical needs choices"):
        load_config(None, [f"data.train={sentiment_file}"] + ["sweep.space={lora.r: {type: categorical}}"])


def test_trials_behind_the_median_are_pruned_and_failed_trials_do_not_stop_the_sweep(tmp_path, tiny_model_dir,
                                                                                     sentiment_file):
    config_path = write_config(tmp_path, tiny_model_dir, sentiment_file, {
        "metric": "tuned.accuracy", "direction": "maximize", "pruning": True, "pruning_startup_trials": 1,
        "space": {"train.learning_rate": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True},
                  "train.max_length": {"type": "categorical", "choices": [9, 64]}}})
    sweep_dir = tmp_path / "runs" / "sweep"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{sweep_dir / 'sweep.db'}",
                                direction="maximize")
    study.enqueue_trial({"train.learning_rate": 1e-2, "train.max_length": 64})  # learns: completes
    study.enqueue_trial({"train.learning_rate": 1e-7, "train.max_length": 64})  # barely moves: pruned
    study.enqueue_trial({"train.learning_rate": 1e-2, "train.max_length": 9})  # no answer fits: fails
    run_sweep(config_path, trials=3)

    trials = load_study(sweep_dir).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                         optuna.trial.TrialState.FAIL]
    # The study maximizes accuracy, so losses are reported negated: the pruned trial's best is worse.
    completed, pruned = trials[0].intermediate_values, trials[1].intermediate_values
    step = max(pruned)
    assert max(pruned.values()) < completed[step]
    assert step < 4 and not (sweep_dir / "trial-1" / "metrics.json").exists()
    assert "train.max_length=9" in trials[2].user_attrs["error"]
    assert "Traceback" in (sweep_dir / "trial-2" / "error.txt").read_text()
    summary = (sweep_dir / "sweep_summary.md").read_text()
    assert f"pruned (step {step})" in summary and "## Failed trials" in summary
    assert load_config(sweep_dir / "best_config.yaml").train.learning_rate == pytest.approx(1e-2)


def test_pruning_reports_the_validation_loss_where_early_stopping_logs_one(tmp_path, tiny_model_dir,
                                                                          sentiment_file):
    config_path = write_config(tmp_path, tiny_model_dir, sentiment_file, {
        "metric": "tuned.loss", "direction": "minimize", "pruning": True,
        "space": {"lora.r": {"type": "categorical", "choices": [4]}}})
    run_sweep(config_path, ["train.early_stopping={eval_steps: 2, patience: 10}"], trials=1)
    sweep_dir = tmp_path / "runs" / "sweep"
    (trial,) = load_study(sweep_dir).trials
    log = [json.loads(line) for line in (sweep_dir / "trial-0" / "train_log.jsonl").open()]
    val = {row["step"]: row["val_loss"] for row in log if "val_loss" in row}
    train = {row["step"]: row["loss"] for row in log if "loss" in row}
    assert set(val) >= {2, 4} and set(trial.intermediate_values) == set(train)
    assert abs(val[2] - train[2]) > 1e-6  # the two losses differ, so the check below tells them apart
    for step, value in trial.intermediate_values.items():
        assert value == pytest.approx(val.get(step, train[step]))


def test_a_metric_missing_from_the_runs_stops_the_sweep(tmp_path, tiny_model_dir, sentiment_file):
    config_path = write_config(tmp_path, tiny_model_dir, sentiment_file, {
        "metric": "tuned.acuracy", "space": {"lora.r": {"type": "categorical", "choices": [2, 4]}}})
    with pytest.raises(TunelabError, match="tuned.acuracy is not in the trial's metrics.*tuned.accuracy"):
        run_sweep(config_path, trials=3)
    trials = load_study(tmp_path / "runs" / "sweep").trials
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.FAIL


@pytest.mark.parametrize("value", [1e-05, 3, "cosine", True, None, "a: b"])
def test_override_values_read_back_unchanged(value):
    _, raw = as_override("train.x", value).split("=", 1)
    assert yaml.safe_load(raw) == value


@pytest.mark.parametrize("task", ["seq2seq", "distill"])
def test_seq2seq_and_distill_runs_can_be_swept(tmp_path, tiny_model_dir, tiny_t5_dir, sentiment_file, task):
    model = tiny_t5_dir if task == "seq2seq" else tiny_model_dir
    config_path = write_config(tmp_path, model, sentiment_file, {
        "metric": "tuned.loss", "direction": "minimize", "pruning": False,
        "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}}}, name=task)
    extra = ["task=seq2seq", "lora.target_modules=[q,v]"] if task == "seq2seq" else [
        "task=distill", f"distill.teacher={tiny_model_dir}"]
    run_sweep(config_path, overrides=extra, trials=2)
    study = load_study(tmp_path / "runs" / task, name=task)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in study.trials:
        run_dir = tmp_path / "runs" / task / f"trial-{trial.number}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["task"] == task
        assert json.loads((run_dir / "metrics.json").read_text())["tuned"]["loss"] == pytest.approx(trial.value)
