"""The start every recipe shares: data, base model and run folder, checked in that order.

Bad data or a missing model fails before a run folder exists, so a failed start never blocks the
next attempt with "run folder already exists".
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import set_seed

from tunelab.config import RunConfig, dump_config, load_config
from tunelab.data.dataset import Splits, load_splits, write_quarantine
from tunelab.data.split import row_hash
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.modeling.fast import prepare_for_training
from tunelab.modeling.load import load_causal_lm
from tunelab.modeling.methods import apply_method, parameter_counts
from tunelab.runs.folder import RunFolder


@dataclass
class Started:
    splits: Splits
    tokenizer: object
    model: object  # the base, prepared for training; ``with_method`` turns it into the model that trains
    folder: RunFolder

    @property
    def run_dir(self) -> Path:
        return self.folder.path


def prepare_run_dir(config: RunConfig, resume: bool, overwrite: bool) -> Path:
    run_dir = config.run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not overwrite:
            raise TunelabError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                               f"--overwrite to replace it, or choose another run_name")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def resume_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The resolved config.yaml a run was started with (``overrides`` applied on top, e.g. a larger
    train.max_steps), pointed at ``run_dir`` wherever it is now: all ``tunelab train --resume RUN_DIR`` needs."""
    folder = Path(run_dir).expanduser()
    if not RunFolder.is_run(folder):
        raise TunelabError(f"--resume {run_dir}: not a run folder (it has no config.yaml); pass a folder made by "
                           f"tunelab train, or the original config with --resume")
    config = load_config(folder / "config.yaml", list(overrides))
    return config.model_copy(update={"output_dir": str(folder.parent), "run_name": folder.name})


def load_base(config: RunConfig):
    """Tokenizer and base causal LM of a run, prepared for training."""
    tokenizer, model = load_causal_lm(config)
    prepare_for_training(model, config)
    return tokenizer, model


def start_run(config: RunConfig, resume: bool, overwrite: bool, kinds: tuple[str, ...], hint: str,
              load: Callable[[RunConfig, Splits], tuple] | None = None) -> Started:
    """Load and check data, load the model, then create the run folder with config and quarantine.

    ``load(config, splits)`` returns (tokenizer, model) for recipes whose model is not the causal LM of
    ``load_causal_lm``, such as a classification head sized by the label set. The model comes back with
    every training speed-up that fits it (tunelab/modeling/fast/).
    """
    set_seed(config.train.seed)
    splits = load_splits(config.data, config.data_seed)
    if splits.kind not in kinds:
        where = config.data.train or ", ".join(source.train for source in config.data.mix)
        raise TunelabError(f"{where}: the rows are {splits.kind} records; {hint}")
    if load:
        tokenizer, model = load(config, splits)
        prepare_for_training(model, config)  # the same speed-ups as load_base, for every recipe's model
    else:
        tokenizer, model = load_base(config)
    folder = RunFolder(prepare_run_dir(config, resume, overwrite))
    folder.mark_running()
    atomic_write_text(folder.config_path, dump_config(config))
    write_quarantine(splits.quarantined, folder.quarantine_path)
    quarantined = (f", {len(splits.quarantined)} quarantined (see {folder.quarantine_path})"
                   if splits.quarantined else "")
    print(f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test{quarantined}", flush=True)
    return Started(splits, tokenizer, model, folder)


def write_data_summary(folder: RunFolder, splits: Splits, **extra) -> dict:
    """data_summary.json, and data_manifest.json: the row hash of every row of each split, which lets the
    registry answer which runs saw a given row."""
    summary = splits.summary() | extra
    atomic_write_json(folder.data_summary_path, summary)
    atomic_write_json(folder.data_manifest_path,
                      {name: [row_hash(r) for r in getattr(splits, name)] for name in ("train", "val", "test")})
    return summary


def with_method(model, config: RunConfig, task_type: str = "CAUSAL_LM") -> tuple[object, dict]:
    """Apply the training method and the speed-ups of its layers; print and return trainable vs total
    parameter counts."""
    model = apply_method(model, config, task_type)
    prepare_for_training(model, config)  # the adapters' layers exist only now
    counts = parameter_counts(model)
    print(f"model: {config.model} ({next(model.parameters()).dtype}), method {config.method}: "
          f"{counts['trainable_params']:,} trainable of {counts['total_params']:,} parameters", flush=True)
    return model, counts


def cap_examples(records: list, config: RunConfig) -> list:
    """A seeded subset of at most eval.max_examples records (all of them when that is null)."""
    limit = config.eval.max_examples
    return random.Random(config.data_seed).sample(records, limit) if limit and len(records) > limit else records
