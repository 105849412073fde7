"""Load a run's train/val/test splits from the files a config names."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import DataConfig
from tunelab.data.formats import common_kind, read_records
from tunelab.data.mixing import count_by_source, mix_sources
from tunelab.data.records import Record, Rejected
from tunelab.data.split import content_hash, drop_augmented, drop_copies_of, split_records
from tunelab.errors import DataError
from tunelab.security.files import sealed_writer


@dataclass
class Splits:
    train: list[Record]
    val: list[Record]
    test: list[Record]
    kind: str
    quarantined: list[Rejected] = field(default_factory=list)
    mixing: dict = field(default_factory=dict)  # data.mix: the weights and train rows per source before mixing

    def summary(self) -> dict:
        out = {"kind": self.kind, "train": len(self.train), "val": len(self.val), "test": len(self.test),
               "quarantined": len(self.quarantined)}
        for name in ("train", "val", "test"):
            records = getattr(self, name)
            out[f"{name}_hash"] = content_hash(r.to_json() for r in records)[:16]
            if self.kind == "labeled":
                counts: dict[str, int] = {}
                for r in records:
                    counts[r.label] = counts.get(r.label, 0) + 1
                out[f"{name}_labels"] = dict(sorted(counts.items()))
        if self.mixing:
            out.update(self.mixing)
            for name in ("train", "val", "test"):
                out[f"{name}_by_source"] = count_by_source(getattr(self, name))
        return out


def _read(path: str, config: DataConfig, rejected: list[Rejected]) -> list[Record]:
    records, bad = read_records(path, shape=config.shape, on_error=config.on_error)
    rejected.extend(bad)
    return records


def load_splits(config: DataConfig, seed: int) -> Splits:
    """Splits from the files ``config`` names; augmented rows are kept out of val/test, and augmented
    copies of val/test rows out of train (both quarantined), whether val/test are split off or given."""
    if config.mix:
        return _load_mixed(config, seed)
    rejected: list[Rejected] = []
    train = _read(config.train, config, rejected)
    val = drop_augmented(_read(config.val, config, rejected), rejected, "val") if config.val else None
    test = drop_augmented(_read(config.test, config, rejected), rejected, "test") if config.test else None
    if val is None or test is None:
        val_fraction = config.val_fraction if val is None else 0.0
        test_fraction = config.test_fraction if test is None else 0.0
        train, split_val, split_test = split_records(train, val_fraction, test_fraction, seed,
                                                     quarantine=rejected)
        val = split_val if val is None else val
        test = split_test if test is None else test
    train = drop_copies_of(train, val + test, rejected)
    kind = common_kind(train + val + test)
    if config.max_train_examples and len(train) > config.max_train_examples:
        train = random.Random(seed).sample(train, config.max_train_examples)
    if not train:
        raise DataError(config.train, "no training rows left after splitting")
    return Splits(train, val, test, kind, rejected)


def _load_mixed(config: DataConfig, seed: int) -> Splits:
    """data.mix: each source read and split like a single data.train file, then the training rows mixed."""
    sources = {s.name: load_splits(config.model_copy(update={"mix": None, "train": s.train, "val": s.val,
                                                             "test": s.test, "max_train_examples": None}), seed)
               for s in config.mix}
    per_source = {name: (part.train, part.val, part.test) for name, part in sources.items()}
    weights = {s.name: s.weight for s in config.mix}
    (train, val, test), mixing = mix_sources(per_source, weights, seed, config.max_train_examples)
    quarantined = [row for part in sources.values() for row in part.quarantined]
    return Splits(train, val, test, common_kind(train + val + test), quarantined, mixing)


def write_quarantine(rejected: list[Rejected], path: Path) -> None:
    if not rejected:
        return
    with sealed_writer(path, text=True) as f:
        for row in rejected:
            f.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
