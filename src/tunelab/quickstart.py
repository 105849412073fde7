"""The first run a new user sees: LoRA on the embedded SmolLM2 for movie-review sentiment.

Its config trains on a seeded subset of the bundled Rotten Tomatoes sentences and evaluates the base
model and the tuned model on the same 300 held-out sentences with the same prompt; ``tunelab
quickstart`` trains it like any run (and records it in the registry).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig, load_config
from tunelab.errors import TunelabError

EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "data" / "examples" / "movie_sentiment.jsonl"

QUICKSTART = [
    "run_name=quickstart",
    "model=smollm2-135m",
    "task=sft",
    "method=lora",
    "data.val_fraction=0.05",
    "data.test_fraction=0.05",
    "data.max_train_examples=3000",
    "train.epochs=1",
    "train.batch_size=12",  # about 1,000 tokens of these short sentences per step
    "train.max_length=256",
    "train.learning_rate=2e-4",
    "train.save_steps=25",
    "eval.max_examples=300",
]


def quickstart_config(overrides: list[str], output_dir: str = "runs") -> RunConfig:
    if not EXAMPLE_DATA.exists():
        raise TunelabError(f"bundled example data not found at {EXAMPLE_DATA}; run quickstart from a tunelab checkout")
    return load_config(None, [f"data.train={EXAMPLE_DATA}", f"output_dir={output_dir}", *QUICKSTART, *overrides])

