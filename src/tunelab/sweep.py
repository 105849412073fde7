"""``tunelab sweep``: hyperparameter search with optuna, where every trial is an ordinary run.

The search space is the config's ``sweep`` section. A trial applies its sampled values as config
overrides and runs the task's recipe in this process, writing a normal run folder
``<output_dir>/<run_name>/trial-<number>``. The study lives in a database: by default the SQLite file
``sweep.db`` in that sweep folder, so calling the command again adds trials to the same study; a
database URL lets several machines work on one study. A trial whose logged loss falls behind the
median of earlier trials at the same step is pruned; a trial that fails is recorded as failed and
the sweep goes on. At the end ``sweep_summary.md`` lists every trial and ``best_config.yaml`` holds
the best trial's full config, ready for ``tunelab train``.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import optuna
import yaml
from transformers import TrainerCallback

from tunelab.config import TASKS, RunConfig, SweepParameter, dump_config, load_config
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import atomic_write_text
from tunelab.train.recipes import train

SWEEP_DB = "sweep.db"
SUMMARY_FILE = "sweep_summary.md"
BEST_CONFIG_FILE = "best_config.yaml"
SWEEP_TASKS = tuple(TASKS)
# Keys the sweep sets itself: where trials are written, and the sweep section.
RESERVED_KEYS = ("run_name", "output_dir", "sweep")
STATE_NAMES = {optuna.trial.TrialState.FAIL: "failed"}  # else the state name in lower case
HEARTBEAT_SECONDS = 60  # a trial whose process died is marked failed after missing a few heartbeats


class MetricNotFound(TunelabError):
    """sweep.metric names nothing in a trial's metrics: every trial would fail, so the sweep stops."""


class TrialFailed(Exception):
    """A trial's error, in one line, for optuna to record as a failed trial."""


def as_override(key: str, value) -> str:
    """``key=value`` in the YAML form load_config reads back as the same value (1e-05 stays a float)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def bound_values(param: SweepParameter) -> list:
    """The values that mark a parameter's range: its bounds, or every choice."""
    if param.type == "categorical":
        return list(param.choices)
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def check_sweep(config: RunConfig, config_path, overrides: list[str]) -> None:
    """Refuse a sweep that cannot work before any trial runs, listing every problem at once.

    Each parameter's bounds (or choices) are applied to the config and validated like any override,
    so an unknown key or a value outside a field's limits is caught here, not in trial 7.
    """
    sweep = config.sweep
    problems = []
    if not sweep.space:
        problems.append("sweep.space: empty; name at least one config key to search, for example "
                        "train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    if config.task not in SWEEP_TASKS:
        problems.append(f"task: {config.task} cannot be swept yet; tunelab sweep runs {', '.join(SWEEP_TASKS)}")
    if sweep.metric.startswith("base."):
        problems.append(f"sweep.metric: {sweep.metric} is a base-model metric; trials skip the base arm (it is the "
                        f"same in every trial), so choose a tuned.* metric")
    for key, param in sweep.space.items():
        if key.split(".")[0] in RESERVED_KEYS:
            problems.append(f"sweep.space.{key}: set by the sweep itself; it cannot be searched")
            continue
        seen = set()
        for value in bound_values(param):
            try:
                load_config(config_path, [*overrides, as_override(key, value)])
            except ConfigError as exc:
                for problem in exc.problems:
                    if problem not in seen:
                        seen.add(problem)
                        problems.append(f"sweep.space.{key} (value {value!r}): {problem}")
    if problems:
        raise ConfigError(problems, str(config_path or "config"))


def suggest(trial: optuna.Trial, key: str, param: SweepParameter):
    if param.type == "categorical":
        return trial.suggest_categorical(key, param.choices)
    if param.type == "int":
        step = int(param.step or 1)
        return trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)


def metric_value(metrics: dict, path: str) -> float:
    """The number at a dotted key path such as tuned.accuracy."""
    node = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            available = ", ".join(numeric_paths(metrics)) or "none"
            raise MetricNotFound(f"sweep.metric {path} is not in the trial's metrics; numeric metrics there: "
                                 f"{available}")
        node = node[part]
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise MetricNotFound(f"sweep.metric {path} is not a number in the trial's metrics ({node!r})")
    return float(node)


def numeric_paths(metrics: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            paths += numeric_paths(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            paths.append(f"{prefix}{key}")
    return paths


class PruningCallback(TrainerCallback):
    """Report each logged loss to the trial and stop training once optuna says the trial is behind.

    The validation loss is reported where the step has one (Trainer's eval_loss, or the val_loss that
    early stopping adds to the log history), else the training loss. Trials share these schedules, so
    at any step every trial reports the same kind of loss. The pruner judges values by the study's
    direction, so when the study maximizes its metric the loss is reported negated: a higher loss is
    then a worse value either way.
    """

    def __init__(self, trial: optuna.Trial, maximize: bool):
        self.trial = trial
        self.sign = -1.0 if maximize else 1.0
        self.reported_steps: set[int] = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        logs = logs or {}
        val = [h["val_loss"] for h in state.log_history if "val_loss" in h and h.get("step") == step]
        loss = val[-1] if val else logs.get("eval_loss", logs.get("loss"))
        if loss is None or step in self.reported_steps:
            return
        self.reported_steps.add(step)
        self.trial.report(self.sign * float(loss), step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_step", step)
            raise optuna.TrialPruned(f"loss {loss:.4f} at step {step} is behind the median of earlier trials")


def config_with(config_path, overrides: list[str], params: dict, output_dir: Path, run_name: str,
                *extra: str) -> RunConfig:
    """The sweep's config with a trial's values, written to ``output_dir/run_name``."""
    return load_config(config_path, [*overrides, *(as_override(k, v) for k, v in params.items()),
                                     as_override("output_dir", str(output_dir)), f"run_name={run_name}", *extra])


def open_study(config: RunConfig, storage: str | None, study_name: str | None, sweep_dir: Path) -> optuna.Study:
    """Create the study, or load it to add trials; refuse a stored study whose direction differs."""
    sweep = config.sweep
    url = storage or sweep.storage or f"sqlite:///{(sweep_dir / SWEEP_DB).resolve()}"
    shared = bool(storage or sweep.storage)
    if not shared:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    name = study_name or config.run_name
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=sweep.pruning_startup_trials,
                                          n_warmup_steps=sweep.pruning_warmup_steps)
              if sweep.pruning else optuna.pruners.NopPruner())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                             grace_period=3 * HEARTBEAT_SECONDS)
        study = optuna.create_study(storage=rdb, study_name=name, direction=sweep.direction, load_if_exists=True)
    except Exception as exc:  # a bad URL or a missing database driver, from sqlalchemy
        raise TunelabError(f"cannot open the sweep storage {url}: {str(exc).splitlines()[0]}") from None
    stored = study.direction.name.lower()
    if stored != sweep.direction:
        raise TunelabError(f"study {name} in {url} was created to {stored} its metric, but sweep.direction is "
                           f"{sweep.direction}; use the same direction or another --study name")
    # Seeded for a repeatable local sweep; the seed moves on with the study so a resumed sweep does not
    # repeat its first samples. Machines sharing a study sample unseeded, so they do not duplicate each other.
    seed = None if shared else config.train.seed + len(study.trials)
    return optuna.load_study(study_name=name, storage=rdb, sampler=optuna.samplers.TPESampler(seed=seed),
                             pruner=pruner)


def run_sweep(config_path, overrides: list[str] = (), trials: int | None = None, storage: str | None = None,
              study_name: str | None = None, timeout: float | None = None,
              record: Callable[[Path, str], AbstractContextManager] | None = None) -> optuna.Study:
    """Run ``trials`` more trials (default sweep.trials) of the config's study, then write the summary.

    ``record(run_dir, study_name)`` wraps each trial's training (the command line records trials in the
    registry this way)."""
    if trials is not None and trials < 1:
        raise TunelabError(f"--trials must be at least 1; got {trials}")
    overrides = list(overrides)
    config = load_config(config_path, overrides)
    check_sweep(config, config_path, overrides)
    sweep = config.sweep
    sweep_dir = config.run_dir
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is printed instead
    study = open_study(config, storage, study_name, sweep_dir)

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, param) for key, param in sweep.space.items()}
        run_dir = sweep_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        callbacks = [PruningCallback(trial, sweep.direction == "maximize")] if sweep.pruning else []
        started = time.perf_counter()
        try:
            # Trials skip the base arm: it is the same model on the same examples in every trial.
            trial_cfg = config_with(config_path, overrides, params, sweep_dir, run_dir.name, "eval.baseline=false")
            with record(run_dir, study.study_name) if record else nullcontext():
                metrics = train(trial_cfg, callbacks=callbacks)
            return metric_value(metrics, sweep.metric)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            trial.set_user_attr("error", message)
            if isinstance(exc, MetricNotFound):
                raise
            if run_dir.is_dir():
                atomic_write_text(run_dir / "error.txt", traceback.format_exc())
            raise TrialFailed(message) from None
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))

    try:
        study.optimize(objective, n_trials=trials or sweep.trials, timeout=timeout, catch=(TrialFailed,),
                       callbacks=[print_trial(sweep.metric)], gc_after_trial=True, show_progress_bar=True)
    finally:
        table = write_summary(study, config, config_path, overrides, sweep_dir)
    print(table)
    print(f"sweep folder: {sweep_dir}  (study {study.study_name}, {len(study.trials)} trials)")
    return study


def print_trial(metric: str):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seconds = trial.user_attrs.get("seconds", 0.0)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            outcome = f"{metric} = {trial.value:.4f}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            outcome = f"pruned at step {trial.user_attrs.get('pruned_at_step', '?')}"
        else:
            outcome = f"failed: {trial.user_attrs.get('error', 'see the log')}"
        print(f"trial {trial.number}: {outcome} ({seconds:.1f} s)", flush=True)
    return callback


def summary_table(study: optuna.Study, metric: str, space_keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per trial with its number, state, values, metric and seconds."""
    keys = list(space_keys) + sorted({k for t in study.trials for k in t.params} - set(space_keys))
    header = ["trial", "state", *keys, metric, "seconds"]
    best = best_trial(study)
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        state = STATE_NAMES.get(t.state, t.state.name.lower())
        if t.state == optuna.trial.TrialState.PRUNED and "pruned_at_step" in t.user_attrs:
            state += f" (step {t.user_attrs['pruned_at_step']})"
        if best is not None and t.number == best.number:
            state += " (best)"
        values = [_format_value(t.params[k]) if k in t.params else "-" for k in keys]
        value = f"{t.value:.4f}" if t.state == optuna.trial.TrialState.COMPLETE else "-"
        seconds = t.user_attrs.get("seconds")
        rows.append([str(t.number), state, *values, value, f"{seconds:.1f}" if seconds is not None else "-"])
    return header, rows


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if complete else None


def aligned_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose columns line up, so it reads well in a terminal too."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def write_summary(study: optuna.Study, config: RunConfig, config_path, overrides: list[str], sweep_dir: Path) -> str:
    """Write sweep_summary.md and, once a trial has completed, best_config.yaml; return the trials table."""
    sweep = config.sweep
    table = aligned_table(*summary_table(study, sweep.metric, list(sweep.space)))
    best = best_trial(study)
    lines = [f"# Sweep {study.study_name}", "",
             f"{len(study.trials)} trials; {sweep.metric} is to {sweep.direction}; trial folders are "
             f"{sweep_dir}/trial-<number>.", "", table, ""]
    if best is not None:
        best_path = sweep_dir / BEST_CONFIG_FILE
        best_cfg = config_with(config_path, overrides, best.params, Path(config.output_dir),
                               f"{config.run_name}-best")
        atomic_write_text(best_path, f"# tunelab train {best_path}\n# best trial of sweep {study.study_name}: "
                                     f"trial {best.number}, {sweep.metric} = {best.value:.4f}\n"
                          + dump_config(best_cfg))
        lines += [f"Best: trial {best.number}, {sweep.metric} = {best.value:.4f}; its config: {BEST_CONFIG_FILE}", ""]
    failed = [t for t in study.trials if "error" in t.user_attrs]
    if failed:
        lines += ["## Failed trials", "", *(f"- trial {t.number}: {t.user_attrs['error']}" for t in failed), ""]
    atomic_write_text(sweep_dir / SUMMARY_FILE, "\n".join(lines))
    return table
