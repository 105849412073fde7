"""``train.report_to``: the user's own trackers (TensorBoard, MLflow, W&B), next to tunelab's logging.

Trainer's integrations do the logging; this module only points them into the run folder for the length
of one run and closes what they leave open.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from tunelab.config import RunConfig


@contextmanager
def trackers(config: RunConfig, run_dir: Path):
    """Point the trackers of ``train.report_to`` into the run folder while one run's Trainer is built and trains.

    TensorBoard writes to ``run_dir/tensorboard`` (its callback reads TENSORBOARD_LOGGING_DIR when Trainer
    builds it), MLflow to a file store in ``run_dir/mlruns`` (runs and artifacts, no server or database
    needed) unless MLFLOW_TRACKING_URI is set. The environment is restored afterwards, and a tracker run
    this training started and left open (W&B's callback never finishes its run; MLflow's stays open after
    an error) is ended, so that the next run in the same process (a sweep's next trial) logs to a run of
    its own, in its own folder.
    """
    report_to = config.train.report_to
    env = {}
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(run_dir.resolve() / "tensorboard")
    if "mlflow" in report_to and not os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = (run_dir.resolve() / "mlruns").as_uri()
        if "MLFLOW_ALLOW_FILE_STORE" not in os.environ:  # MLflow 3 refuses a file store without it
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    saved = {key: os.environ.get(key) for key in env}
    open_before = open_tracker_runs(report_to)
    os.environ.update(env)
    try:
        yield
    finally:
        try:
            end_tracker_runs(report_to, open_before)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def open_tracker_runs(report_to: list[str]) -> dict:
    """The MLflow and W&B runs open in this process now (None where none is)."""
    runs = {}
    if "mlflow" in report_to:
        import mlflow

        runs["mlflow"] = mlflow.active_run()
    if "wandb" in report_to:
        import wandb

        runs["wandb"] = wandb.run
    return runs


def end_tracker_runs(report_to: list[str], open_before: dict) -> None:
    """End the MLflow and W&B runs opened since ``open_before`` (runs the caller had open stay open)."""
    now = open_tracker_runs(report_to)
    if now.get("mlflow") is not None and (open_before["mlflow"] is None
                                          or now["mlflow"].info.run_id != open_before["mlflow"].info.run_id):
        import mlflow

        mlflow.end_run()
    if now.get("wandb") is not None and now["wandb"] is not open_before["wandb"]:
        import wandb

        wandb.finish()
