"""RunFolder: the layout, status through a run's life (SIGKILL included), and artifact checksums."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tqdm.auto import tqdm
from transformers import TrainerCallback

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.runs.folder import RunFolder
from tunelab.runs.load import load_run
from tunelab.train.recipes import train


def tiny_config(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              "run_name=tiny", "train.max_steps=2", "train.batch_size=4", "train.max_length=64",
                              "train.precision=fp32", "train.logging_steps=1", "eval.max_examples=4",
                              "eval.max_new_tokens=2", *extra])


def test_a_finished_run_records_its_status_and_checksums(tmp_path, tiny_model_dir, sentiment_file):
    metrics = train(tiny_config(tmp_path, tiny_model_dir, sentiment_file))
    run = RunFolder(tmp_path / "runs" / "tiny")
    assert run.status().status == "finished"
    assert run.metrics() == json.loads(json.dumps(metrics))
    assert run.weights_dir == run.path / "adapter"
    assert run.labels() == ["negative", "positive"]
    recorded = {a["path"] for a in json.loads(run.artifacts_path.read_text())["artifacts"]}
    assert {"config.yaml", "metrics.json", "predictions.jsonl", "adapter/adapter_model.safetensors"} <= recorded
    loaded = load_run(run.path)  # the seam every reader of a run uses
    assert loaded.run.path == run.path and loaded.labels == ["negative", "positive"] and not loaded.classifier

    assert run.changed_artifacts() == []
    (run.path / "adapter" / "adapter_model.safetensors").write_bytes(b"tampered")
    assert run.changed_artifacts() == ["adapter/adapter_model.safetensors"]


class Boom(TrainerCallback):
    def __init__(self, error: BaseException):
        self.error = error

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:  # after step 1 was logged
            raise self.error


@pytest.mark.parametrize("error,status", [(RuntimeError("disk full"), "failed"), (KeyboardInterrupt(), "killed")])
def test_a_run_that_stops_records_why_and_where(tmp_path, tiny_model_dir, sentiment_file, error, status):
    with pytest.raises(type(error)):
        train(tiny_config(tmp_path, tiny_model_dir, sentiment_file), callbacks=[Boom(error)])
    assert not list(tqdm._instances)  # its progress bar was closed, so later output starts on a clean line
    recorded = RunFolder(tmp_path / "runs" / "tiny").status()
    assert recorded.status == status
    assert recorded.reason == ("interrupted" if status == "killed" else "disk full")
    assert recorded.last_step == 1


def test_a_refused_run_leaves_the_older_run_as_it_was(tmp_path, tiny_model_dir, sentiment_file):
    train(tiny_config(tmp_path, tiny_model_dir, sentiment_file))
    with pytest.raises(TunelabError, match="already exists"):
        train(tiny_config(tmp_path, tiny_model_dir, sentiment_file))
    assert RunFolder(tmp_path / "runs" / "tiny").status().status == "finished"


def test_a_run_killed_with_sigkill_reads_as_failed_with_its_last_step(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    script = (f"import time; from tunelab.runs.folder import RunFolder; run = RunFolder({str(run.path)!r}); "
              f"run.mark_running(); open({str(run.train_log_path)!r}, 'w').write('{{\"step\": 7}}\\n{{\"step\": 8'); "
              f"print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert run.status().status == "running" and run.status().pid == child.pid
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while run.status().status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    recorded = run.status()
    assert recorded.status == "failed"
    assert recorded.last_step == 7  # the line cut short by the kill is skipped


def test_folders_that_are_not_finished_runs_give_one_clear_error(tmp_path):
    with pytest.raises(TunelabError, match="not a run folder"):
        RunFolder(tmp_path).config()
    (tmp_path / "config.yaml").write_text("run_name: x\n")
    with pytest.raises(TunelabError, match="no adapter/ or model/"):
        RunFolder(tmp_path).weights_dir
    with pytest.raises(TunelabError, match="artifacts.json is missing"):
        RunFolder(tmp_path).changed_artifacts()
    assert RunFolder(tmp_path).status().status == "failed"  # no status.json and no metrics
