"""A run's ``report.md``: what went in, how training went, and base vs tuned side by side.

Everything is rebuilt from the files in the run directory, so a report can be regenerated at
any time (``config.yaml``, ``metrics.json``, ``train_log.jsonl``, ``predictions.jsonl`` and
``data_summary.json``; each one is optional and its section is skipped when it is missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.io import read_json, read_jsonl
from tunelab.tables import cell, escape, markdown_table
from tunelab.security import files as sealed

# Preferred metric for the one-line summary, best first; otherwise the first numeric one.
HEADLINE_METRICS = ("accuracy", "f1", "exact_match", "rouge_l", "bleu", "perplexity")
SAMPLES_PER_GROUP = 5


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_training_curve(log_path: str | Path, png_path: str | Path) -> bool:
    """Plot training loss (and eval and validation loss) against step; False if there is nothing to plot.

    Validation loss comes from the val_loss rows: the periodic validation curve (train.val_loss) or early
    stopping's evaluations; logs without them (older runs) plot the training loss alone."""
    rows = read_jsonl(Path(log_path))
    train = [(r["step"], r["loss"]) for r in rows if "step" in r and _is_number(r.get("loss"))]
    if not train:
        return False
    evals = [
        (r["step"], r["eval_loss"]) for r in rows if "step" in r and _is_number(r.get("eval_loss"))
    ]
    vals = [(r["step"], r["val_loss"]) for r in rows if "step" in r and _is_number(r.get("val_loss"))]

    # Imported here because matplotlib is slow to import and only this function needs it;
    # the Agg canvas renders off-screen without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o", label="eval loss")
    if vals:
        ax.plot(*zip(*vals), "s-", markersize=4, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, format="png")
    return True


def _comparison_rows(metrics: dict) -> list[tuple[str, ...]]:
    """(metric, base, tuned, change) for every numeric metric on either side, tuned order first; a
    distillation run's teacher adds its value as a last column."""
    base = metrics.get("base") or {}
    tuned = metrics.get("tuned") or {}
    teacher = metrics.get("teacher")
    names = [k for k in tuned if _is_number(tuned[k])]
    names += [k for k in base if _is_number(base[k]) and k not in names]
    rows = []
    for name in names:
        b, t = base.get(name), tuned.get(name)
        both = _is_number(b) and _is_number(t)
        rows.append((
            name,
            f"{b:.4f}" if _is_number(b) else "-",
            f"{t:.4f}" if _is_number(t) else "-",
            f"{t - b:+.4f}" if both else "-",
        ) + ((f"{teacher[name]:.4f}" if _is_number(teacher.get(name)) else "-",) if teacher else ()))
    return rows


COLUMNS = ("metric", "base", "tuned", "change")


def _columns(metrics: dict) -> tuple[str, ...]:
    return COLUMNS + (("teacher",) if metrics.get("teacher") else ())


def _side_by_side_rows(metrics: dict, arms: list[str]) -> list[tuple[str, ...]]:
    """(metric, one value per arm) for every numeric metric of any arm, in order of first appearance."""
    names = list(dict.fromkeys(k for arm in arms for k, v in (metrics.get(arm) or {}).items() if _is_number(v)))

    def cell(value) -> str:
        return f"{value:.4f}" if _is_number(value) else "-"

    return [(name, *(cell((metrics.get(arm) or {}).get(name)) for arm in arms)) for name in names]


def comparison_table(metrics: dict, arms: list[str] | None = None) -> str:
    """Base vs tuned as an aligned plain-text table for the terminal; with ``arms``, those arms side by side
    (an ensemble and its members)."""
    rows = [_columns(metrics), *_comparison_rows(metrics)] if arms is None else [("metric", *arms),
                                                                       *_side_by_side_rows(metrics, arms)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return " | ".join(cells).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def markdown_comparison_table(metrics: dict) -> str:
    """Base vs tuned as a Markdown table for ``report.md``."""
    return markdown_table(list(_columns(metrics)), [list(r) for r in _comparison_rows(metrics)])


def _summary_line(metrics: dict, n_examples: int) -> str:
    """The headline metric in one line: "accuracy 0.80 -> 0.87 (+0.07) on 300 test examples"."""
    base = metrics.get("base") or {}
    tuned = metrics.get("tuned") or {}
    numeric = [k for k in tuned if _is_number(tuned[k])]
    if not numeric:
        return "No evaluation metrics were recorded."
    name = next((m for m in HEADLINE_METRICS if m in numeric), numeric[0])
    t = tuned[name]
    if _is_number(base.get(name)):
        text = f"{name} {base[name]:.2f} -> {t:.2f} ({t - base[name]:+.2f})"
    else:
        text = f"{name} {t:.2f} (no baseline)"
    return text + (f" on {n_examples} test examples." if n_examples else ".")


def _data_section(summary: dict) -> list[str]:
    """Scalars in one key/value table, then one small table per nested dict (e.g. label counts)."""
    parts = []
    scalars = [[escape(k), escape(v)] for k, v in summary.items() if not isinstance(v, dict)]
    if scalars:
        parts.append(markdown_table(["item", "value"], scalars))
    for key, value in summary.items():
        if isinstance(value, dict):
            rows = [[escape(k), escape(json.dumps(v) if isinstance(v, (dict, list)) else v)]
                    for k, v in value.items()]
            counts = all(isinstance(v, int) for v in value.values())
            parts.append(markdown_table([escape(key), "count" if counts else "value"], rows))
    return parts


def _training_section(train: dict, curve: bool) -> list[str]:
    labels = {
        "tokens": ("Tokens", lambda v: f"{v:,}"),
        "seconds": ("Time", lambda v: f"{v:,.1f} s"),
        "tokens_per_second": ("Throughput", lambda v: f"{v:,.1f} tokens/s"),
        "peak_rss_mb": ("Peak RSS", lambda v: f"{v:,.0f} MB"),
        "final_loss": ("Final loss", lambda v: f"{v:.4f}"),
    }
    lines = [f"- {label}: {fmt(train[key])}" for key, (label, fmt) in labels.items()
             if _is_number(train.get(key))]
    lines += [f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}"
              for key, value in train.items()
              if key not in labels and not isinstance(value, (dict, list))]
    parts = ["\n".join(lines)] if lines else []
    if curve:
        parts.append("![training curve](training_curve.png)")
    return parts


def _confusion_matrices(metrics: dict) -> list[str]:
    parts = []
    for side in ("base", "tuned"):
        cm = (metrics.get(side) or {}).get("confusion_matrix")
        if not isinstance(cm, dict):
            continue
        labels = [escape(label) for label in cm["labels"]]
        rows = [[labels[i], *counts] for i, counts in enumerate(cm["matrix"])]
        table = markdown_table(["reference \\ predicted", *labels], rows)
        caption = f"**Confusion matrix, {side}** (rows: reference, columns: prediction)"
        parts.append(f"{caption}\n\n{table}")
    return parts


def _by_source_section(metrics: dict) -> list[str]:
    """data.mix runs: one base-vs-tuned table per source."""
    base = (metrics.get("base") or {}).get("by_source") or {}
    tuned = (metrics.get("tuned") or {}).get("by_source") or {}
    return [f"**{escape(name)}**\n\n" + markdown_comparison_table({"base": base.get(name), "tuned": tuned.get(name)})
            for name in dict.fromkeys([*tuned, *base])]


def _forgetting_section(forgetting: dict) -> list[str]:
    base, tuned, change = (forgetting.get(k) for k in ("base_perplexity", "tuned_perplexity", "change_pct"))
    if not all(_is_number(v) for v in (base, tuned, change)):
        return []
    return [f"Perplexity on general text (lower is better; a rise means general ability was lost): "
            f"base {base:.4f}, tuned {tuned:.4f} ({change:+.2f}%)."]


def _samples_section(predictions: list[dict]) -> list[str]:
    """A few examples the tuned model got wrong and right, the quickest sanity check of a run."""
    groups = [("Tuned model wrong", False), ("Tuned model right", True), ("Not scored", None)]
    parts = []
    for title, flag in groups:
        picked = [p for p in predictions if p.get("tuned_correct") is flag][:SAMPLES_PER_GROUP]
        if not picked:
            continue
        rows = [[cell(p.get("id")), cell(p.get("input")), cell(p.get("reference")),
                 cell(p.get("base_prediction")), cell(p.get("tuned_prediction"))]
                for p in picked]
        table = markdown_table(["id", "input", "reference", "base", "tuned"], rows, align="lllll")
        parts.append(f"**{title}**\n\n{table}")
    return parts


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` atomically, so a reader never sees half a report."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.exists() else ""
    config = yaml.safe_load(config_text) if config_text else None
    run_name = config.get("run_name") if isinstance(config, dict) else None
    metrics = read_json(run_dir / "metrics.json") or {}
    predictions = sealed.read_jsonl(run_dir / "predictions.jsonl")
    data_summary = read_json(run_dir / "data_summary.json") or metrics.get("data")
    curve = plot_training_curve(run_dir / "train_log.jsonl", run_dir / "training_curve.png")

    sections = [(f"# {run_name or run_dir.name}", [])]
    if metrics.get("tuned"):
        sections.append(("## Summary", [_summary_line(metrics, len(predictions))]))
    if data_summary:
        sections.append(("## Data", _data_section(data_summary)))
    training = _training_section(metrics.get("train") or {}, curve)
    if training:
        sections.append(("## Training", training))
    if metrics.get("tuned") or metrics.get("base"):
        evaluation = [markdown_comparison_table(metrics), *_confusion_matrices(metrics)]
        sections.append(("## Evaluation", evaluation))
    by_source = _by_source_section(metrics)
    if by_source:
        sections.append(("## Evaluation by source", by_source))
    forgetting = _forgetting_section(metrics.get("forgetting") or {})
    if forgetting:
        sections.append(("## Forgetting", forgetting))
    samples = _samples_section(predictions)
    if samples:
        sections.append(("## Sample predictions", samples))
    if config_text:
        sections.append(("## Config", [f"```yaml\n{config_text.rstrip()}\n```"]))

    text = "\n\n".join("\n\n".join([heading, *body]) for heading, body in sections) + "\n"
    report_path = run_dir / "report.md"
    sealed.write_text(report_path, text)  # it quotes predictions: encrypted when a key is set
    return report_path
