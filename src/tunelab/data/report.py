"""``report.md`` for a prepared data folder: what was kept and dropped, and what the data looks like.

Built from summary.json's numbers and the split files, so a rerun on the same inputs writes the same
bytes, figures included. The split files are read one row at a time, keeping only each row's length
and the few longest and shortest examples, so a report on millions of rows fits in little memory.
Figures use matplotlib's Agg canvas without pyplot, as the run report does.
"""

from __future__ import annotations

import bisect
import io
import json
import re
import statistics
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.io import atomic_write_bytes
from tunelab.security.files import open_readable, write_text
from tunelab.tables import cell, escape, markdown_table

SPLIT_NAMES = ("train", "val", "test")
EXAMPLE_CHARS = 200  # longest/shortest examples are cut to this many characters
EXTREMES = 3  # how many longest and shortest examples are shown
LABEL_FIGURE = "label_balance.png"
_WORDS = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks


def token_figure(split: str) -> str:
    return f"token_lengths_{split}.png"


@dataclass
class Example:
    split: str
    line: int  # 1-based line in the split file
    text: str  # what was counted: the text, or every turn's content
    shown: str  # what the report shows: the text, or "role: content" turns
    label: str | None
    tokens: int


def write_data_report(out_dir, summary: dict, tokenizer=None) -> Path:
    """Write ``out_dir/report.md`` and its figures for the folder ``prepare_data`` just wrote.

    ``tokenizer``: anything with ``encode(text) -> list`` (a Hugging Face tokenizer, a tiktoken
    encoding) for exact token counts; without one, words and punctuation marks are counted.
    """
    out = Path(out_dir)
    count, unit, counted_with = _token_counter(tokenizer)
    lengths, extremes = _read_splits(out, count)
    figures = {token_figure(name) for name in SPLIT_NAMES} | {LABEL_FIGURE}
    written: set[str] = set()

    sections = [
        ("# Data report", [_intro(summary, counted_with)]),
        ("## Rows per stage", _stage_section(summary)),
        ("## Token lengths", _length_section(out, lengths, unit, written)),
    ]
    if summary.get("labels"):
        sections.append(("## Label balance", _label_section(out, summary["labels"], written)))
    sections += [
        ("## Near duplicates", _duplicate_section(summary)),
        ("## PII", _pii_section(summary)),
        ("## Longest and shortest examples", _extremes_section(extremes, summary["kind"] == "labeled")),
    ]
    for stale in sorted(figures - written):  # from an earlier run on other data
        (out / stale).unlink(missing_ok=True)
    report_path = out / "report.md"
    text = "\n\n".join("\n\n".join([heading, *body]) for heading, body in sections) + "\n"
    write_text(report_path, text)  # quotes example rows: encrypted when a key is set
    return report_path


def _token_counter(tokenizer):
    """A length function, its unit for axis labels, and how it counts, for the report's intro."""
    if tokenizer is None:
        how = ("words and punctuation marks, a cheap estimate rather than model tokens "
               "(pass a tokenizer for exact counts)")
        return (lambda text: len(_WORDS.findall(text))), "words", how
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    return (lambda text: len(tokenizer.encode(text))), "tokens", f"tokens of the {name} tokenizer"


def split_lengths(folder: str | Path) -> dict[str, array]:
    """Every row's length (words and punctuation marks, as report.md counts without a tokenizer) per split of
    the prepared ``folder``: what the dashboard's length histogram draws."""
    count, _, _ = _token_counter(None)
    return _read_splits(Path(folder), count)[0]


def _read_splits(out: Path, count) -> tuple[dict[str, array], dict[str, list[Example]]]:
    """Every row's length per split, and the EXTREMES longest and shortest examples over all splits
    (ties go to the earlier split and line)."""
    lengths = {name: array("q") for name in SPLIT_NAMES}
    ranked: dict[str, list[tuple[tuple, Example]]] = {"longest": [], "shortest": []}
    for order, split in enumerate(SPLIT_NAMES):
        path = out / f"{split}.jsonl"
        if not path.exists():
            continue
        with open_readable(path, "r", newline="\n") as f:  # rows end at "\n" only
            for line, raw in enumerate(f, 1):
                row = json.loads(raw)
                messages = row.get("messages")
                text = "\n".join(turn["content"] for turn in messages) if messages else row["text"]
                tokens = count(text)
                lengths[split].append(tokens)
                for kind, key in (("longest", (-tokens, order, line)), ("shortest", (tokens, order, line))):
                    kept = ranked[kind]
                    if len(kept) < EXTREMES or key < kept[-1][0]:
                        shown = " ".join(f"{t['role']}: {t['content']}" for t in messages) if messages else text
                        bisect.insort(kept, (key, Example(split, line, text, shown, row.get("label"), tokens)),
                                      key=lambda item: item[0])
                        del kept[EXTREMES:]
    return lengths, {kind: [example for _, example in kept] for kind, kept in ranked.items()}


def _intro(summary: dict, counted_with: str) -> str:
    inputs = ", ".join(f"`{path}`" for path in summary["inputs"])
    return (f"{summary['rows_kept']} {summary['kind']} rows kept of {summary['rows_read']} read from "
            f"{inputs}. Lengths are counted in {counted_with}.")


def _stage_section(summary: dict) -> list[str]:
    rows = [["read", summary["rows_read"]]]
    rows += [[f"quarantined: {escape(reason)}", n] for reason, n in summary["quarantine_reasons"].items()]
    rows += [["quarantined, all reasons", summary["quarantined"]], ["kept", summary["rows_kept"]]]
    rows += [[f"kept in {name}", n] for name, n in summary["splits"].items()]
    note = f"Every quarantined row is in `{summary['quarantine_file']}` with its reason."
    return [markdown_table(["stage", "rows"], rows), note]


def _length_section(out: Path, split_lengths: dict[str, array], unit: str, written: set[str]) -> list[str]:
    rows, images = [], []
    for name, lengths in split_lengths.items():
        if not lengths:
            rows.append([name, 0, "-", "-", "-", "-"])
            continue
        rows.append([name, len(lengths), min(lengths), f"{np.median(lengths):g}",
                     f"{statistics.fmean(lengths):.1f}", max(lengths)])
        figure = token_figure(name)
        _plot_histogram(lengths, f"{name}: {len(lengths)} rows", unit, out / figure)
        written.add(figure)
        images.append(f"![{name} token lengths]({figure})")
    return [markdown_table(["split", "rows", "min", "median", "mean", "max"], rows), *images]


def _label_section(out: Path, labels: dict[str, dict[str, int]], written: set[str]) -> list[str]:
    names = sorted({label for counts in labels.values() for label in counts})
    totals = {split: sum(counts.values()) for split, counts in labels.items()}

    def share(split: str, label: str) -> str:
        n = labels[split].get(label, 0)
        return f"{n} ({n / totals[split]:.0%})" if totals[split] else "0"

    rows = [[escape(label), *(share(split, label) for split in labels)] for label in names]
    _plot_labels(labels, names, out / LABEL_FIGURE)
    written.add(LABEL_FIGURE)
    return [markdown_table(["label", *labels], rows), f"![label balance]({LABEL_FIGURE})"]


def _duplicate_section(summary: dict) -> list[str]:
    if summary["settings"].get("near_dup_threshold") is None:
        return ["Near-duplicate and leak checks were off."]
    parts = [f"{summary['near_duplicates']} rows removed as near duplicates of earlier rows; "
             f"{summary['leaks_removed']} val/test rows removed as near duplicates of train rows (leaks)."]
    for number, cluster in enumerate(summary["duplicate_clusters"], 1):
        kept = cluster["kept"]
        rows = [["kept", _where(kept), "-", cell(kept["text"])]]
        rows += [["removed", _where(r), f"{r['similarity']:.2f}", cell(r["text"])] for r in cluster["removed"]]
        more = cluster["removed_total"] - len(cluster["removed"])
        heading = f"**Cluster {number}**: {cluster['removed_total']} removed"
        table = markdown_table(["row", "where", "similarity", "text"], rows, align="llrl")
        parts.append(f"{heading}\n\n{table}" + (f"\n\nand {more} more removed" if more > 0 else ""))
    return parts


def _where(snippet: dict) -> str:
    return escape(f"{snippet['source']} line {snippet['line']}")


def _pii_section(summary: dict) -> list[str]:
    mode = summary.get("pii_mode", "off")
    if mode == "off":
        return ["PII check off."]
    counts = summary.get("pii", {})
    if not counts:
        return ["No PII found."]
    action = {"report": "found and left in place", "redact": "found and redacted",
              "drop": "found; their rows were quarantined"}[mode]
    table = markdown_table(["type", "finds"], [[pii_type, n] for pii_type, n in counts.items()])
    return [f"PII {action} (mode `{mode}`):", table]


def _extremes_section(extremes: dict[str, list[Example]], labeled: bool) -> list[str]:
    if not extremes["longest"]:
        return ["No rows kept."]
    header = ["", "split", "line", "length", "text", *(["label"] if labeled else [])]
    rows = [[kind, e.split, e.line, e.tokens, cell(e.shown, EXAMPLE_CHARS), *([cell(e.label)] if labeled else [])]
            for kind, picked in extremes.items() for e in picked]
    return [markdown_table(header, rows, align="llrrl" + "l" * labeled)]


def _figure():
    # Imported here: matplotlib is slow to import and only the figures need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=80)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> None:
    """Save without the version stamp, so the bytes only change when the data does."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


def _plot_histogram(lengths: Sequence[int], title: str, unit: str, path: Path) -> None:
    fig, ax = _figure()
    ax.hist(lengths, bins=min(30, max(lengths) - min(lengths) + 1))
    ax.set_title(title)
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("rows")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_labels(labels: dict[str, dict[str, int]], names: list[str], path: Path) -> None:
    """Each label's share of its split, so splits of different sizes compare at a glance."""
    fig, ax = _figure()
    width = 0.8 / len(labels)
    for i, (split, counts) in enumerate(labels.items()):
        total = sum(counts.values()) or 1
        ax.bar([x + i * width for x in range(len(names))], [100 * counts.get(n, 0) / total for n in names],
               width=width, label=split)
    # "$" would start matplotlib mathtext; labels are shown as written.
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], [n.replace("$", r"\$") for n in names],
                  rotation=30 if len(names) > 5 else 0)
    ax.set_ylabel("% of split rows")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.legend(ncols=len(labels), loc="upper center")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
