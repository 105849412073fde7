"""``tunelab eval``: score a run (tuned vs its base) or a plain model on any data file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tunelab.config import RunConfig
from tunelab.data.formats import common_kind, read_records
from tunelab.errors import TunelabError
from tunelab.eval.suite import build_eval_task, evaluate_arms, label_choices, prediction_rows
from tunelab.io import atomic_write_json, atomic_write_jsonl
from tunelab.report import comparison_table


def _load_run(run_dir: Path):
    from peft import PeftModel

    from tunelab.train.setup import load_base

    config = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    tokenizer, base = load_base(config)
    if (run_dir / "adapter").is_dir():
        tuned = PeftModel.from_pretrained(base, run_dir / "adapter")
    elif (run_dir / "model").is_dir():
        from transformers import AutoModelForCausalLM

        tuned = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=next(base.parameters()).dtype)
    else:
        raise TunelabError(f"run folder {run_dir} has no adapter/ or model/; did the run finish?")
    summary_path = run_dir / "data_summary.json"
    labels = json.loads(summary_path.read_text(encoding="utf-8")).get("labels") if summary_path.exists() else None
    return config, tokenizer, base, tuned, labels


def evaluate_cli(model: str, data: str, out: str | None, max_examples: int | None, baseline: bool = True) -> dict:
    records, rejected = read_records(data, on_error="quarantine")
    kind = common_kind(records)
    if max_examples and len(records) > max_examples:
        records = random.Random(0).sample(records, max_examples)
    run_dir = Path(model)
    is_run = (run_dir / "config.yaml").exists()
    if is_run:
        config, tokenizer, base, tuned, labels = _load_run(run_dir)
    else:
        from tunelab.train.setup import load_base

        config = RunConfig(model=model)
        tokenizer, tuned = load_base(config)
        base, labels = None, None
    choices = labels or label_choices(records, kind)
    task = build_eval_task(tokenizer, records, records, kind, choices, config.data.label_prompt,
                           config.data.system_prompt, config.train.max_length)
    # The command line decides the baseline; a plain model has no base to compare with.
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"baseline": is_run and baseline})})
    metrics, arms = evaluate_arms(tuned, tokenizer, task, config, lambda: base)
    metrics["data"] = {"file": data, "examples": len(records), "quarantined": len(rejected)}
    out_dir = Path(out) if out else (run_dir if is_run else Path(".")) / f"eval-{Path(data).stem}"
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_jsonl(out_dir / "predictions.jsonl", prediction_rows(task, arms))
    print(comparison_table(metrics))
    print(f"wrote {out_dir / 'metrics.json'} and predictions.jsonl")
    return metrics

