"""Compiled decoder layers train like eager ones, and evaluation runs eager again."""

import json

import pytest
import torch

from tunelab.config import load_config
from tunelab.modeling.fast.compile import MIN_FORWARD_PASSES, compiled_layers, decoder_layers, should_compile
from tunelab.train.sft import run_sft


def _losses(run_dir):
    return [row["loss"] for row in map(json.loads, (run_dir / "train_log.jsonl").open()) if "loss" in row]


def test_compiled_run_matches_eager_run(tmp_path, tiny_model_dir, sentiment_file):
    losses = {}
    for setting in ("false", "true"):
        config = load_config(None, [
            f"model={tiny_model_dir}", f"data.train={sentiment_file}", f"output_dir={tmp_path / 'runs'}",
            f"run_name=compile-{setting}", f"train.compile={setting}",
            "train.precision=fp32", "train.max_steps=6",
            "train.batch_size=4", "train.learning_rate=1e-2", "train.logging_steps=1", "train.max_length=64",
            "eval.max_examples=4", "eval.max_new_tokens=2", "eval.baseline=false"])
        metrics = run_sft(config)
        assert metrics["train"]["compiled"] is (setting == "true")
        losses[setting] = _losses(tmp_path / "runs" / f"compile-{setting}")
    assert len(losses["true"]) == len(losses["false"]) == 6
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-3)
    assert losses["true"][-1] < losses["true"][0]


def test_layers_are_eager_again_after_the_block(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    with compiled_layers(model, enabled=True):
        assert all("forward" in vars(layer) for layer in decoder_layers(model))
    assert not any("forward" in vars(layer) for layer in decoder_layers(model))
    assert not hasattr(model, "_require_grads_hook")


def test_auto_compiles_only_runs_long_enough_to_pay_it_back():
    assert should_compile("auto", MIN_FORWARD_PASSES) is not torch.cuda.is_available()
    assert not should_compile("auto", MIN_FORWARD_PASSES - 1)
    assert should_compile(True, 1) and not should_compile(False, 10**6)
