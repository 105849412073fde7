"""Fixtures: LoRA runs trained on the tiny random base model, and a server answering for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.serve.servers import running_server
from tunelab.config import load_config
from tunelab.train.recipes import train


def tiny_lora_run(folder: Path, model_dir, data: Path, name: str, lr: float, *extra: str) -> Path:
    config = load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={folder}", f"run_name={name}",
                                "train.max_steps=4", "train.batch_size=4", "train.save_steps=100",
                                "train.max_length=64", f"train.learning_rate={lr}", "train.precision=fp32",
                                "train.compile=false", "eval.max_examples=4", "eval.max_new_tokens=2",
                                "eval.baseline=false", "lora.r=4", *extra])
    train(config)
    return folder / name


def push_apart(run: Path, seed: int) -> None:
    """Give the adapter's B matrices seeded noise: four steps barely move a LoRA away from the base (B starts at
    zero), and the tests need adapters that answer visibly differently from the base and from each other."""
    import torch
    from safetensors.torch import load_file, save_file

    path = run / "adapter" / "adapter_model.safetensors"
    weights = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if "lora_B" in name:
            weights[name] = tensor + 0.5 * torch.randn(tensor.shape, generator=generator)
    save_file(weights, path)


@pytest.fixture(scope="session")
def adapter_runs(tmp_path_factory, tiny_model_dir):
    """Two LoRA runs on the tiny model (different learning rates, so different answers), in one runs/ folder."""
    root = tmp_path_factory.mktemp("serve")
    rows = [{"text": f"the movie was {w}", "label": "positive" if i % 2 == 0 else "negative"}
            for i, w in enumerate(["great", "dull", "wonderful", "tedious", "fun", "awful"] * 8)]
    data = root / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    runs = root / "runs"
    adapters = {"a": tiny_lora_run(runs, tiny_model_dir, data, "run-a", 5e-2),
                "b": tiny_lora_run(runs, tiny_model_dir, data, "run-b", 2e-1, "train.seed=7")}
    for seed, run in enumerate(adapters.values()):
        push_apart(run, seed)
    adapters["stops"] = tiny_lora_run(runs, tiny_model_dir, data, "run-stops", 2e-1, "eval.max_new_tokens=24")
    return adapters  # run-stops is left as trained: it has learned to end its answers with the end token


@pytest.fixture
def served(tiny_model_dir, adapter_runs):
    """The tiny base plus adapters a and b, auth on."""
    adapters = [("a", adapter_runs["a"]), ("b", adapter_runs["b"])]
    with running_server(tiny_model_dir, adapters, adapter_roots=[adapter_runs["a"].parent]) as running:
        yield running
