"""What a model card says, gathered from the registry and the run folder (cards.py renders it).

Metrics against the base come with 95% intervals from the run's own per-item results: Wilson intervals
for label accuracy and an exact paired interval for its change, bootstrap intervals for token F1.
Slices break the same items down by label, by data.mix source and by any meta field in eval.slices.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.data.formats import read_records
from tunelab.data.mixing import SOURCE_KEY
from tunelab.data.split import row_hash
from tunelab.registry.cards import CardData, MetricRow, SliceRow, render_card
from tunelab.registry.compare import flatten
from tunelab.registry.ingest import base_key, item_of, tuned_key
from tunelab.registry.queries import is_right, items_of, latest_evaluation
from tunelab.registry.schema import DatasetRow, Model, ModelVersion, Run
from tunelab.registry.stats import mcnemar_exact, mean_interval, paired_bootstrap, proportion_interval
from tunelab.runs.folder import RunFolder
from tunelab.security import files as sealed

CARD_FILE = "MODEL_CARD.md"
EMBEDDED_LICENSES = {"smollm2-135m": "apache-2.0", "minilm-l6": "apache-2.0"}
# The Hugging Face ids of the embedded defaults, so a card's base_model links to the model it names.
EMBEDDED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
                    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
SHOWN_SETTINGS = ("task", "method", "model", "train.epochs", "train.max_steps", "train.batch_size",
                  "train.gradient_accumulation", "train.learning_rate", "train.lr_scheduler", "train.warmup_ratio",
                  "train.weight_decay", "train.max_length", "train.packing", "train.precision", "train.seed",
                  "data.max_train_examples", "data.seed")
METHOD_SECTIONS = {"lora": "lora", "dora": "lora", "rslora": "lora", "pissa": "lora", "qlora": "lora",
                   "ia3": "ia3", "prefix": "prefix", "prompt": "prompt", "freeze": "freeze"}
MAX_FAILURES = 5
MAX_SLICE_VALUES = 20


def build_card(session: Session, version: ModelVersion) -> CardData:
    model = session.get(Model, version.model_id)
    run = session.get(Run, version.run_id)
    config = run.config or {}
    tuned = latest_evaluation(session, tuned_key(run.id), arm="tuned")
    base = latest_evaluation(session, base_key(str(run.base_model)), arm="base",
                             eval_set_hash=tuned.eval_set_hash if tuned else None)
    tuned_items = items_of(session, tuned) if tuned else {}
    base_items = items_of(session, base) if base else {}
    folder = RunFolder(run.path)
    return CardData(
        name=model.name, version=version.version, task=str(run.task),
        base_model=EMBEDDED_HUB_IDS.get(str(run.base_model), str(run.base_model)),
        method=str(run.method), license=EMBEDDED_LICENSES.get(str(run.base_model)), run_name=run.name, run_id=run.id,
        created=version.created.isoformat(), intended_use="", datasets=_datasets(session, run),
        hyperparameters=hyperparameters(config), metrics=_metrics(run, tuned_items, base_items),
        eval_examples=len(tuned_items), slices=_slices(folder, config, tuned_items, base_items),
        failures=_failures(folder, tuned_items), compute=_compute(run), gate=version.last_gate, limitations=[],
        tags=[str(k) if v in (None, "", True) else f"{k}:{v}" for k, v in (version.tags or {}).items()])


def write_card(session: Session, version: ModelVersion) -> Path:
    """Render the card into the registry and as MODEL_CARD.md in the run folder, next to the weights."""
    text = render_card(build_card(session, version))
    version.card = text
    path = Path(version.artifact_path).parent / CARD_FILE
    if path.parent.is_dir():
        sealed.write_text(path, text)  # it quotes held-out rows: encrypted when a key is set
    return path


def _datasets(session: Session, run: Run) -> list[dict]:
    if not run.dataset_version_id:
        return []
    data = (run.config or {}).get("data") or {}
    out = []
    for split in ("train", "val", "test"):
        hashes = session.scalars(select(DatasetRow.row_hash).where(DatasetRow.version_id == run.dataset_version_id,
                                                                   DatasetRow.split == split)
                                 .order_by(DatasetRow.position)).all()
        if not hashes:
            continue
        sources = ([s["name"] for s in data["mix"]] if data.get("mix")
                   else [Path(f).name for f in (data.get(split) or data.get("train"),) if f])
        out.append({"role": split, "rows": len(hashes), "sources": sources,
                    "hash": hashlib.sha256("\n".join(hashes).encode()).hexdigest()})
    return out


def hyperparameters(config: dict) -> dict:
    """The settings people look for first (SHOWN_SETTINGS), with the method's own section."""
    flat = flatten(config)
    shown = {key: flat[key] for key in SHOWN_SETTINGS if flat.get(key) is not None}
    section = METHOD_SECTIONS.get(str(config.get("method")))
    if section:
        shown |= {key: value for key, value in flat.items() if key.startswith(section + ".") and value is not None}
    return shown


def _metrics(run: Run, tuned: dict, base: dict) -> list[MetricRow]:
    """The headline metric with intervals from per-item results, then the others as recorded."""
    recorded = run.metrics or {}
    tuned_m, base_m = recorded.get("tuned") or {}, recorded.get("base") or {}
    rows = []
    shared = [h for h in tuned if h in base]
    labels = tuned and all(item.correct is not None for item in tuned.values())
    headline = "accuracy" if labels else "f1"
    if tuned:
        rows.append(_headline_row(headline, tuned, base, shared, labels))
    for name in ("accuracy", "exact_match", "f1", "rouge_l", "bleu", "ece", "loss", "perplexity"):
        if name == headline and tuned:
            continue
        t, b = _number(tuned_m.get(name)), _number(base_m.get(name))
        if t is not None or b is not None:
            rows.append(MetricRow(name, b, t, higher_is_better=name not in ("ece", "loss", "perplexity")))
    return rows


def _headline_row(name: str, tuned: dict, base: dict, shared: list[str], labels: bool) -> MetricRow:
    if labels:
        hits = [is_right(item) for item in tuned.values()]
        row = MetricRow(name, None, sum(hits) / len(hits), tuned_interval=proportion_interval(sum(hits), len(hits)))
        if base:
            base_hits = [is_right(item) for item in base.values()]
            row.base = sum(base_hits) / len(base_hits)
            row.base_interval = proportion_interval(sum(base_hits), len(base_hits))
        if shared:
            paired = mcnemar_exact([is_right(tuned[h]) for h in shared], [is_right(base[h]) for h in shared])
            row.delta_interval = (paired.low, paired.high)
        return row
    scores = [item.score or 0.0 for item in tuned.values()]
    row = MetricRow(name, None, sum(scores) / len(scores), tuned_interval=mean_interval(scores))
    if base:
        base_scores = [item.score or 0.0 for item in base.values()]
        row.base, row.base_interval = sum(base_scores) / len(base_scores), mean_interval(base_scores)
    if shared:
        paired = paired_bootstrap([tuned[h].score or 0.0 for h in shared], [base[h].score or 0.0 for h in shared])
        row.delta_interval = (paired.low, paired.high)
    return row


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _slices(folder: RunFolder, config: dict, tuned: dict, base: dict) -> list[SliceRow]:
    """Headline metric per label, per mix source and per eval.slices meta field, on the evaluated items."""
    if not tuned or not folder.eval_set_path.is_file():
        return []
    records = {row_hash(r): r for r in read_records(folder.eval_set_path, on_error="quarantine")[0]}
    fields = ["label", "source", *((config.get("eval") or {}).get("slices") or [])]
    labels = all(item.correct is not None for item in tuned.values())
    metric = "accuracy" if labels else "f1"
    groups: dict[tuple[str, str], list[str]] = {}
    for item_hash in tuned:
        record = records.get(item_hash)
        if record is None:
            continue
        for name in fields:
            value = (record.label if name == "label" else record.meta.get(SOURCE_KEY) if name == "source"
                     else record.meta.get(name))
            if value is not None and value != "":
                groups.setdefault((name, str(value)), []).append(item_hash)
    out = []
    for (name, value), hashes in sorted(groups.items()):
        if sum(1 for (n, _) in groups if n == name) > MAX_SLICE_VALUES:
            continue
        out.append(SliceRow(name, value, len(hashes), metric, _mean(base, hashes, labels),
                            _mean(tuned, hashes, labels)))
    return out


def _mean(items: dict, hashes: list[str], labels: bool) -> float | None:
    values = [(float(is_right(items[h])) if labels else items[h].score or 0.0) for h in hashes if h in items]
    return sum(values) / len(values) if values else None


def _failures(folder: RunFolder, tuned: dict) -> list[dict]:
    out = []
    for row in folder.predictions() if folder.predictions_path.is_file() else []:
        item = tuned.get(item_of(row))
        if item is not None and not is_right(item):
            out.append({"input": row.get("input"), "reference": row.get("reference"), "prediction": item.prediction})
            if len(out) == MAX_FAILURES:
                break
    return out


def _compute(run: Run) -> dict:
    train = (run.metrics or {}).get("train") or {}
    hardware = run.hardware or {}
    described = hardware.get("gpu") or hardware.get("cpu") or ""
    if hardware.get("cores") and not hardware.get("gpu"):
        described = f"{described} ({hardware['cores']} cores)"
    return {key: train.get(key) for key in ("tokens", "seconds", "tokens_per_second", "peak_rss_mb", "steps")} | {
        "hardware": described}
