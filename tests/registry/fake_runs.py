"""Run folders written the way ``tunelab train`` writes them, with chosen per-item answers.

The gate's statistics need runs whose right and wrong items are known exactly; training real models
for that is slow and noisy. These folders hold everything the registry reads: config.yaml, status.json,
train_log.jsonl, metrics.json, predictions.jsonl (with item hashes), eval_set.jsonl, data_manifest.json,
adapter/ and artifacts.json. Their training data is a real file, so the near-duplicate check can read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.config import load_config
from tunelab.data.records import Record
from tunelab.data.split import row_hash
from tunelab.io import atomic_write_json, atomic_write_jsonl
from tunelab.runs.folder import RunFolder

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def review(i: int, topic: str = "test") -> Record:
    """A distinct sentence per ``i`` (no two share a word 5-gram), labelled by parity."""
    words = " ".join(WORDS[(i * 7 + k * 5) % len(WORDS)] + str(i) for k in range(6))
    return Record("labeled", text=f"{topic} review {i}: {words}", label="positive" if i % 2 else "negative")


def eval_items(n: int) -> list[Record]:
    return [review(i) for i in range(n)]


def write_data(path: Path, records: list[Record]) -> Path:
    atomic_write_jsonl(path, [r.to_json() for r in records])
    return path


def fake_run(root: Path, name: str, correct: list[bool], eval_records: list[Record],
             train_records: list[Record] | None = None, base_correct: list[bool] | None = None,
             steps: int = 4, status: str = "finished") -> Path:
    """A finished LoRA run folder named ``name`` whose tuned model answered eval item i right iff
    ``correct[i]`` (and its base iff ``base_correct[i]``)."""
    train_records = train_records if train_records is not None else [review(1000 + i, "train") for i in range(40)]
    folder = RunFolder(root / name)
    folder.path.mkdir(parents=True)
    train_file = write_data(root / f"{name}-train.jsonl", train_records)
    test_file = write_data(root / f"{name}-test.jsonl", eval_records)
    config = load_config(None, [f"run_name={name}", "model=tiny-base", f"data.train={train_file}",
                                f"data.test={test_file}", "data.val_fraction=0", f"output_dir={root}"])
    folder.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    atomic_write_json(folder.status_path, {"status": status, "pid": None, "host": None, "started": 1.0, "ended": 2.0})
    folder.train_log_path.write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "learning_rate": 1e-4}) + "\n"
                                             for s in range(1, steps + 1)), encoding="utf-8")
    base_correct = base_correct if base_correct is not None else [False] * len(correct)
    rows = []
    for i, record in enumerate(eval_records):
        wrong = "negative" if record.label == "positive" else "positive"
        rows.append({"id": i, "item": row_hash(record), "input": record.text, "reference": record.label,
                     "base_prediction": record.label if base_correct[i] else wrong, "base_correct": base_correct[i],
                     "tuned_prediction": record.label if correct[i] else wrong, "tuned_correct": correct[i]})
    atomic_write_jsonl(folder.predictions_path, rows)
    atomic_write_jsonl(folder.eval_set_path, [r.to_json() for r in eval_records])
    atomic_write_json(folder.data_manifest_path, {"train": [row_hash(r) for r in train_records], "val": [],
                                                  "test": [row_hash(r) for r in eval_records]})
    accuracy = sum(correct) / len(correct)
    atomic_write_json(folder.metrics_path, {"base": {"accuracy": sum(base_correct) / len(base_correct)},
                                            "tuned": {"accuracy": accuracy},
                                            "train": {"tokens": 1000, "seconds": 2.0, "steps": steps}})
    (folder.path / "adapter").mkdir()
    (folder.path / "adapter" / "adapter_model.safetensors").write_bytes(name.encode() * 10)
    folder.write_artifacts()
    return folder.path
