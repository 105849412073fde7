"""What one run folder shows on the Run page and in ``tunelab runs export-html``: read once, shaped for templates.

Everything comes from the folder itself (config.yaml, status.json, train_log.jsonl, metrics.json,
predictions.jsonl, data_summary.json, report.md), so a run that is still training shows what it has
written so far and an exported page needs no registry. Files that may hold user content are read with
``security.files`` (plaintext or encrypted at rest alike). Nothing here escapes HTML: the templates do.

Intervals: metrics.json holds point values; where a metric carries its own interval (``accuracy_ci``,
``accuracy_interval`` or ``intervals: {accuracy: [low, high]}`` in an arm) it is shown, and accuracy gets
95% intervals from the run's own per-item right/wrong answers, as its model card does (Wilson for each
arm, the exact paired interval for tuned minus base).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunelab.registry.card_data import hyperparameters
from tunelab.registry.cards import LOWER_IS_BETTER
from tunelab.registry.stats import mcnemar_exact, proportion_interval
from tunelab.runs.folder import RunFolder, RunStatus
from tunelab.runs.report import HEADLINE_METRICS
from tunelab.security import files as sealed
from tunelab.ui.curves import read_from
from tunelab.ui.render import duration, number

IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
REPORT_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?\s*\)")
INTERVAL_SUFFIXES = ("_ci", "_interval", "_low", "_high")
SPLITS = ("train", "val", "test")

# ---- predictions

PREDICTION_FILTERS = {
    "all": ("All", lambda base, tuned: True),
    "wrong": ("Tuned wrong", lambda base, tuned: tuned is False),
    "flipped": ("Flipped", lambda base, tuned: isinstance(base, bool) and isinstance(tuned, bool) and base != tuned),
    "fixed": ("Fixed", lambda base, tuned: base is False and tuned is True),
    "broken": ("Broken", lambda base, tuned: base is True and tuned is False),
}
FILTER_LABELS = [(name, label) for name, (label, _) in PREDICTION_FILTERS.items()]
SEARCHED_FIELDS = ("input", "reference", "base_prediction", "tuned_prediction")


def as_text(value) -> str:
    """A prediction field as text: strings as they are, chat messages and other structures as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def passes(row: dict, name: str) -> bool:
    """Whether prediction ``row`` belongs to filter ``name`` ("flipped": base and tuned disagree on correctness)."""
    return PREDICTION_FILTERS[name][1](row.get("base_correct"), row.get("tuned_correct"))


def searched(rows: list[dict], query: str) -> list[dict]:
    """The rows whose input, reference or answers hold every word of ``query`` (case ignored)."""
    words = query.lower().split()
    if not words:
        return rows
    return [row for row in rows
            if all(any(word in as_text(row.get(f)).lower() for f in SEARCHED_FIELDS) for word in words)]


def filter_counts(rows: list[dict]) -> dict[str, int]:
    return {name: sum(passes(row, name) for row in rows) for name in PREDICTION_FILTERS}


def prediction_cells(row: dict, position: int) -> dict:
    """A prediction row as the tables show it: texts, right/wrong flags, and which way it flipped."""
    base, tuned = row.get("base_correct"), row.get("tuned_correct")
    flip = "fixed" if base is False and tuned is True else "broken" if base is True and tuned is False else ""
    return {"id": row.get("id", position), "input": as_text(row.get("input")),
            "reference": as_text(row.get("reference")), "base": as_text(row.get("base_prediction")),
            "tuned": as_text(row.get("tuned_prediction")), "base_correct": base, "tuned_correct": tuned,
            "has_base": "base_prediction" in row, "flip": flip}


# ---- metrics

@dataclass
class MetricLine:
    name: str
    base: float | None
    tuned: float | None
    teacher: float | None = None
    base_interval: tuple[float, float] | None = None
    tuned_interval: tuple[float, float] | None = None
    delta_interval: tuple[float, float] | None = None

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.tuned is None else self.tuned - self.base

    @property
    def higher_is_better(self) -> bool:
        return self.name not in LOWER_IS_BETTER

    @property
    def trend(self) -> str:
        """'up' when tuned is better than base (respecting the metric's direction), 'down' when worse."""
        if not self.delta:
            return ""
        return "up" if (self.delta > 0) == self.higher_is_better else "down"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def recorded_interval(arm: dict, name: str) -> tuple[float, float] | None:
    """An interval metrics.json records for ``name`` in one arm, if any."""
    for candidate in (arm.get(f"{name}_ci"), arm.get(f"{name}_interval"), (arm.get("intervals") or {}).get(name)):
        if isinstance(candidate, (list, tuple)) and len(candidate) == 2 and all(is_number(v) for v in candidate):
            return float(candidate[0]), float(candidate[1])
    if is_number(arm.get(f"{name}_low")) and is_number(arm.get(f"{name}_high")):
        return float(arm[f"{name}_low"]), float(arm[f"{name}_high"])
    return None


def metric_names(*arms: dict) -> list[str]:
    """Numeric metrics of the arms, headline metrics first; interval keys are not metrics of their own."""
    names = list(dict.fromkeys(k for arm in arms for k, v in arm.items()
                               if is_number(v) and not k.endswith(INTERVAL_SUFFIXES)))
    return sorted(names, key=lambda n: HEADLINE_METRICS.index(n) if n in HEADLINE_METRICS else len(HEADLINE_METRICS))


def metric_lines(metrics: dict, predictions: list[dict]) -> list[MetricLine]:
    """Base vs tuned (and teacher, for distillation) per metric, with the intervals there are."""
    base, tuned, teacher = (metrics.get(arm) or {} for arm in ("base", "tuned", "teacher"))
    lines = []
    for name in metric_names(tuned, base):
        line = MetricLine(name, base.get(name) if is_number(base.get(name)) else None,
                          tuned.get(name) if is_number(tuned.get(name)) else None,
                          teacher.get(name) if is_number(teacher.get(name)) else None,
                          recorded_interval(base, name), recorded_interval(tuned, name))
        if name == "accuracy":
            with_accuracy_intervals(line, predictions)
        lines.append(line)
    return lines


def with_accuracy_intervals(line: MetricLine, predictions: list[dict]) -> None:
    """95% intervals of accuracy from the per-item answers, when they are the items the accuracy was measured on."""
    tuned = [row.get("tuned_correct") for row in predictions]
    base = [row.get("base_correct") for row in predictions]
    if not tuned or not all(isinstance(v, bool) for v in tuned) or line.tuned is None:
        return
    if abs(sum(tuned) / len(tuned) - line.tuned) > 1e-6:
        return  # the predictions are not the items metrics.json counted
    line.tuned_interval = line.tuned_interval or proportion_interval(sum(tuned), len(tuned))
    if all(isinstance(v, bool) for v in base) and line.base is not None:
        line.base_interval = line.base_interval or proportion_interval(sum(base), len(base))
        paired = mcnemar_exact(tuned, base)
        line.delta_interval = (paired.low, paired.high)


TRAIN_FACTS = {  # metrics["train"] key -> (label, how to show it)
    "steps": ("Steps", number),
    "tokens": ("Trained tokens", number),
    "seconds": ("Training time", duration),
    "tokens_per_second": ("Throughput", lambda v: f"{number(v)} tokens/s"),
    "final_loss": ("Final train loss", number),
    "best_val_loss": ("Best validation loss", number),
    "best_step": ("Best step", number),
    "examples": ("Training examples", number),
    "peak_rss_mb": ("Peak memory", lambda v: f"{number(round(v))} MB"),
    "trainable_params": ("Trainable parameters", number),
    "total_params": ("Total parameters", number),
}


def train_facts(train: dict) -> list[tuple[str, str]]:
    """(label, value) for every scalar of metrics["train"], the known ones first and named for people."""
    facts = [(label, show(train[key])) for key, (label, show) in TRAIN_FACTS.items() if is_number(train.get(key))]
    facts += [(key.replace("_", " "), number(value)) for key, value in train.items()
              if key not in TRAIN_FACTS and (is_number(value) or isinstance(value, (str, bool)))]
    return facts


def confusion_matrices(metrics: dict) -> list[dict]:
    out = []
    for arm in ("base", "tuned"):
        matrix = (metrics.get(arm) or {}).get("confusion_matrix")
        if isinstance(matrix, dict) and matrix.get("labels") and matrix.get("matrix"):
            out.append({"arm": arm, "labels": [str(label) for label in matrix["labels"]], "rows": matrix["matrix"]})
    return out


def headline(lines: list[MetricLine]) -> MetricLine | None:
    """The metric the page leads with: the first headline metric the tuned model has."""
    return next((line for line in lines if line.tuned is not None), None)


# ---- config

def key_settings(config: dict) -> dict:
    """The settings people look for first (as the model card lists them), with the method's own section."""
    return {key: setting_text(value) for key, value in hyperparameters(config).items()}


def setting_text(value) -> str:
    """A config value as YAML writes it (true, null, 0.0002)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return value if isinstance(value, str) else number(value)


def yaml_lines(text: str) -> list[tuple[str, str, str]]:
    """(before, key, rest) per line of a YAML text, so the template can colour the keys (found by YAML's own
    scanner, so a quoted value running over several lines is no key); a line without a key is all rest."""
    keys: dict[int, tuple[int, int]] = {}
    previous = None
    try:
        for token in yaml.scan(text):
            if isinstance(previous, yaml.KeyToken) and isinstance(token, yaml.ScalarToken):
                keys.setdefault(token.start_mark.line, (token.start_mark.column, token.end_mark.column))
            previous = token
    except yaml.YAMLError:
        keys = {}
    out = []
    for number_, line in enumerate(text.splitlines()):
        start, end = keys.get(number_, (0, 0))
        out.append((line[:start], line[start:end], line[end:]) if end > start and end <= len(line) else ("", "", line))
    return out


# ---- data

@dataclass
class DataView:
    splits: list[dict] = field(default_factory=list)  # {name, rows, hash}
    labels: list[dict] = field(default_factory=list)  # {label, counts: {split: (count, share)}}
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)  # {title, columns, rows}

    def __bool__(self) -> bool:
        return bool(self.splits or self.labels or self.facts or self.tables)


def data_view(summary: dict | None) -> DataView:
    """data_summary.json as tables: rows per split, label balance per split, then whatever else it holds."""
    view = DataView()
    if not isinstance(summary, dict):
        return view
    used = set()
    for split in SPLITS:
        if is_number(summary.get(split)):
            view.splits.append({"name": split, "rows": summary[split], "hash": summary.get(f"{split}_hash")})
            used |= {split, f"{split}_hash"}
    view.labels = label_balance(summary)
    used |= {f"{split}_labels" for split in SPLITS}
    for key, value in summary.items():
        if key in used:
            continue
        if isinstance(value, dict) and value:
            view.tables.append(nested_table(key, value))
        elif isinstance(value, list):
            view.facts.append((key, ", ".join(as_text(v) for v in value) or "-"))
        else:
            view.facts.append((key, number(value)))
    return view


def label_balance(summary: dict) -> list[dict]:
    per_split = {split: summary[f"{split}_labels"] for split in SPLITS
                 if isinstance(summary.get(f"{split}_labels"), dict)}
    labels = list(dict.fromkeys(label for counts in per_split.values() for label in counts))
    rows = []
    for label in labels:
        counts = {}
        for split, split_counts in per_split.items():
            total = sum(v for v in split_counts.values() if is_number(v)) or 1
            count = split_counts.get(label, 0)
            counts[split] = (count, count / total if is_number(count) else 0.0)
        rows.append({"label": str(label), "counts": counts})
    return rows


def nested_table(title: str, value: dict) -> dict:
    """A dict as a table: of scalars, two columns; of dicts (e.g. lengths per split), one column per inner key."""
    if all(isinstance(v, dict) for v in value.values()):
        columns = list(dict.fromkeys(k for inner in value.values() for k in inner))
        rows = [[str(key), *(number(inner.get(c)) for c in columns)] for key, inner in value.items()]
        return {"title": title, "columns": ["", *columns], "rows": rows}
    rows = [[str(key), as_text(v) if isinstance(v, (dict, list)) else number(v)] for key, v in value.items()]
    return {"title": title, "columns": [title, "value"], "rows": rows}


# ---- report plots

def report_images(folder: RunFolder) -> list[str]:
    """Images report.md shows that lie in the run folder itself (training_curve.png...): the only files the
    dashboard serves from a run folder."""
    if not folder.report_path.is_file():
        return []
    try:
        text = sealed.read_text(folder.report_path)
    except (OSError, UnicodeDecodeError):
        return []
    names = dict.fromkeys(match.group(1) for match in REPORT_IMAGE.finditer(text))
    return [name for name in names if image_file(folder, name, listed=[name]) is not None]


def image_file(folder: RunFolder, name: str, listed: list[str] | None = None) -> Path | None:
    """The file ``name`` of the run folder when it is a listed .png/.svg directly inside it, else None."""
    listed = report_images(folder) if listed is None else listed
    if name not in listed or "/" in name or "\\" in name or Path(name).suffix.lower() not in IMAGE_TYPES:
        return None
    root = folder.path.resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path


# ---- the whole view

@dataclass
class RunView:
    """Everything the Run page and the exported page show about one run folder."""

    folder: RunFolder
    name: str
    status: RunStatus
    config: dict
    config_text: str
    rows: list[dict]  # train_log.jsonl
    offset: int  # the byte of train_log.jsonl the rows were read to: the live stream goes on from there
    metrics: dict
    lines: list[MetricLine]
    predictions: list[dict]
    data: DataView
    images: list[str]

    @property
    def train(self) -> list[tuple[str, str]]:
        return train_facts(self.metrics.get("train") or {})

    @property
    def headline(self) -> MetricLine | None:
        return headline(self.lines)

    @property
    def settings(self) -> dict:
        return key_settings(self.config)

    @property
    def config_yaml(self) -> list[tuple[str, str, str]]:
        return yaml_lines(self.config_text)

    @property
    def matrices(self) -> list[dict]:
        return confusion_matrices(self.metrics)

    @property
    def seconds(self) -> float | None:
        """How long the run has taken: until it ended, or until now while it runs."""
        started, ended = self.status.started, self.status.ended
        if not is_number(started) or started <= 0:
            return None
        end = ended if is_number(ended) else time.time() if self.status.status == "running" else None
        return None if end is None else max(0.0, end - started)


def read_config(folder: RunFolder) -> tuple[dict, str]:
    """config.yaml as a dict and as its text (empty when it is missing or unreadable)."""
    if not folder.config_path.is_file():
        return {}, ""
    text = sealed.read_text(folder.config_path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    return (loaded if isinstance(loaded, dict) else {}), text


def read_run_view(path: str | Path) -> RunView:
    """Read the run folder at ``path`` (blocking: call it in a worker thread from async code)."""
    folder = RunFolder(path)
    config, config_text = read_config(folder)
    rows, offset = read_from(folder.train_log_path)
    metrics = sealed.read_json(folder.metrics_path) or {}
    predictions = folder.predictions()
    summary = sealed.read_json(folder.data_summary_path) or metrics.get("data")
    return RunView(folder=folder, name=str(config.get("run_name") or folder.path.name), status=folder.status(),
                   config=config, config_text=config_text, rows=rows, offset=offset, metrics=metrics,
                   lines=metric_lines(metrics, predictions), predictions=predictions, data=data_view(summary),
                   images=report_images(folder))
