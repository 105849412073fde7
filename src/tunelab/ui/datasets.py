"""The Datasets pages: every recorded dataset version, and one version's data report and quarantine.

A version made by ``tunelab data prepare`` keeps its prepared folder (``DatasetVersion.path``): the page
reads its report numbers from the registry, counts row lengths in the split files as ``report.md`` does
(so the histogram matches it), and pages through ``quarantine.jsonl`` with each row's reason. Those files
may be encrypted at rest, so they are read with ``security.files``. A version recorded from a run's own
splits (origin "run") has no folder of its own: the page says what the registry knows about it.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from tunelab.data.prepare import reason_category
from tunelab.data.report import split_lengths
from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.lineage import lineage
from tunelab.registry.schema import Dataset, DatasetVersion, Run
from tunelab.security import files as sealed
from tunelab.security.roles import READ_RUNS
from tunelab.ui.render import page, partial
from tunelab.ui.sessions import Session, needs

router = APIRouter()

SPLITS = ("train", "val", "test")
QUARANTINE_PAGE = 25  # quarantined rows per page
RAW_CHARS = 400  # a quarantined row's raw text is cut to this many characters
RUNS_LISTED = 3  # run links per version in the list, then "+N more"
HISTOGRAM_BINS = 24
CHART = {"width": 620, "height": 210, "left": 44, "right": 12, "top": 12, "bottom": 30}


# ---- the list

def dataset_list(registry) -> list[dict]:
    """Each dataset with its versions (newest first), each with the runs that read it."""
    with registry.session() as db:
        pairs = db.execute(select(Dataset, DatasetVersion).join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
                           .order_by(Dataset.name, DatasetVersion.version.desc())).all()
        readers = db.execute(select(Run.dataset_version_id, Run.id, Run.name)
                             .where(Run.dataset_version_id.is_not(None)).order_by(Run.created)).all()
    runs_of: dict[int, list[dict]] = {}
    for version_id, run_id, name in readers:
        runs_of.setdefault(version_id, []).append({"id": run_id, "name": name})
    datasets: dict[str, dict] = {}
    for dataset, version in pairs:
        entry = datasets.setdefault(dataset.name, {"name": dataset.name, "versions": []})
        entry["versions"].append(version_row(version) | {"runs": runs_of.get(version.id, [])})
    return list(datasets.values())


def version_row(version: DatasetVersion) -> dict:
    return {"id": version.id, "version": version.version, "hash": version.content_hash, "kind": version.kind,
            "rows": {split: (version.rows or {}).get(split, 0) for split in SPLITS}, "origin": version.origin,
            "path": version.path, "created": version.created, "erased": version.erased}


@router.get("/ui/datasets")
async def datasets_page(request: Request, session: Session = Depends(needs(READ_RUNS))):
    datasets = await anyio.to_thread.run_sync(dataset_list, request.app.state.ui.registry)
    return page(request, "datasets.html", session, title="Datasets", datasets=datasets, runs_listed=RUNS_LISTED)


# ---- one version

def version_details(registry, version_id: str) -> dict:
    """What the registry knows of one version (``version_id`` as the URL has it): its numbers, settings and
    report, and the runs that read it or trained on some of its rows (the lineage graph's runs)."""
    with registry.session() as db:
        version = db.get(DatasetVersion, int(version_id)) if version_id.isdigit() else None
        if version is None:
            raise NotFoundError(f"no dataset version with id {version_id}; the Datasets page lists them")
        label = f"{db.get(Dataset, version.dataset_id).name}@{version.version}"
        graph = lineage(db, f"dataset:{label}")
        details = version_row(version) | {"label": label, "settings": version.settings or {},
                                          "report": version.report or {}}
    details["read_by"] = [r for r in graph["runs"] if r["dataset"] == label]
    details["shared_by"] = [r for r in graph["runs"] if r["dataset"] != label]
    return details


def prepared_folder(details: dict) -> Path | None:
    """The folder ``tunelab data prepare`` wrote for this version, when it still exists."""
    if details["origin"] != "prepare" or not details["path"]:
        return None
    folder = Path(details["path"])
    return folder if (folder / "summary.json").is_file() else None


def data_report(folder: Path | None, report: dict) -> dict:
    """The report's parts as the page shows them: length chart, label balance, PII, duplicates, clusters."""
    reasons = report.get("quarantine_reasons") or {}
    duplicates = {"exact": reasons.get("exact duplicate", 0), "near": report.get("near_duplicates", 0),
                  "leaks": report.get("leaks_removed", 0)}
    summary = (sealed.read_json(folder / "summary.json") or {}) if folder else {}
    near_check = (summary.get("settings") or {}).get("near_dup_threshold", True) is not None
    return {"lengths": length_chart(folder) if folder else None, "labels": label_balance(report.get("labels")),
            "pii": report.get("pii") or {}, "pii_mode": report.get("pii_mode"), "duplicates": duplicates,
            "near_check": near_check, "clusters": [_cluster(c) for c in (summary.get("duplicate_clusters") or [])[:3]]}


def _cluster(cluster: dict) -> dict:
    """A near-duplicate cluster of summary.json with each row's file name for display."""
    def named(row: dict) -> dict:
        return row | {"file": Path(str(row.get("source") or "")).name}

    return cluster | {"kept": named(cluster["kept"]), "removed": [named(r) for r in cluster["removed"]]}


def label_balance(labels: dict | None) -> list[dict]:
    """One row per label: its count and share in each split (an empty list for unlabeled data)."""
    if not labels:
        return []
    totals = {split: sum(counts.values()) for split, counts in labels.items()}
    names = sorted({label for counts in labels.values() for label in counts})
    return [{"label": name, "splits": [{"split": split, "n": labels[split].get(name, 0),
                                        "share": labels[split].get(name, 0) / totals[split] if totals[split] else 0}
                                       for split in labels]} for name in names]


# ---- the length histogram (server-side SVG)

def length_chart(folder: Path) -> dict | None:
    """A stacked histogram of row lengths (words and punctuation marks, as report.md counts them) over the
    split files, laid out for an inline SVG; None when no row was kept."""
    stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) if f.is_file() else None
                  for f in (folder / f"{split}.jsonl" for split in SPLITS))
    lengths = _split_lengths(str(folder), stamp)
    if not any(lengths.values()):
        return None
    return _histogram_layout(lengths)


@functools.lru_cache(maxsize=16)
def _split_lengths(folder: str, stamp: tuple) -> dict[str, list[int]]:
    """Row lengths per split; ``stamp`` (the files' sizes and times) keys the cache, so a rewrite is read again."""
    lengths = split_lengths(folder)
    return {split: list(values) for split, values in lengths.items()}


def _histogram_layout(lengths: dict[str, list[int]]) -> dict:
    every = [n for values in lengths.values() for n in values]
    low, high = min(every), max(every)
    width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BINS))
    bins = math.ceil((high - low + 1) / width)
    counts = {split: Counter((n - low) // width for n in values) for split, values in lengths.items()}
    tallest = max(sum(counts[s][b] for s in counts) for b in range(bins))
    plot_w = CHART["width"] - CHART["left"] - CHART["right"]
    plot_h = CHART["height"] - CHART["top"] - CHART["bottom"]
    step = plot_w / bins
    bars = []
    for b in range(bins):
        start, end = low + b * width, low + (b + 1) * width - 1
        base, segments = CHART["top"] + plot_h, []
        for split in SPLITS:
            n = counts.get(split, Counter())[b]
            if n:
                height = plot_h * n / tallest
                base -= height
                segments.append({"split": split, "n": n, "y": round(base, 1), "height": round(height, 1)})
        span = f"{start}" if start == end else f"{start}-{end}"
        tip = f"{span} words: " + ", ".join(f"{s['split']} {s['n']}" for s in segments) if segments else f"{span}: 0"
        bars.append({"x": round(CHART["left"] + b * step + 1, 1), "width": round(max(step - 2, 1), 1),
                     "segments": segments, "title": tip})
    ticks = sorted({0, tallest // 2, tallest})
    return {**CHART, "plot_h": plot_h, "bars": bars, "low": low, "high": high, "rows": len(every),
            "y_ticks": [{"y": round(CHART["top"] + plot_h * (1 - t / tallest), 1), "label": t} for t in ticks],
            "x_ticks": [{"x": CHART["left"], "label": low, "anchor": "start"},
                        {"x": CHART["left"] + plot_w / 2, "label": low + (high - low) // 2, "anchor": "middle"},
                        {"x": CHART["left"] + plot_w, "label": high, "anchor": "end"}],
            "stats": [_length_stats(split, values) for split, values in lengths.items()]}


def _length_stats(split: str, values: list[int]) -> dict:
    if not values:
        return {"split": split, "rows": 0}
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"split": split, "rows": len(values), "min": ordered[0], "median": median,
            "mean": sum(values) / len(values), "max": ordered[-1]}


# ---- the quarantine browser

def quarantine_page(folder: Path | None, reason: str = "", number: int = 1) -> dict:
    """One page of quarantine.jsonl (rows with their reason category), filtered by category, and every
    category's count for the filter."""
    path = folder / "quarantine.jsonl" if folder else None
    categories: Counter = Counter()
    rows, matched = [], 0
    number = max(1, number)
    first = (number - 1) * QUARANTINE_PAGE
    if path is not None and path.is_file():
        for line in sealed.iter_lines(path):
            if not line.strip():
                continue
            row = json.loads(line)
            category = reason_category(str(row.get("reason") or ""))
            categories[category] += 1
            if reason and category != reason:
                continue
            if first <= matched < first + QUARANTINE_PAGE:
                rows.append(_quarantined(row, category))
            matched += 1
    pages = max(1, math.ceil(matched / QUARANTINE_PAGE))
    return {"rows": rows, "matched": matched, "page": number, "pages": pages, "reason": reason,
            "categories": sorted(categories.items(), key=lambda item: (-item[1], item[0])),
            "total": sum(categories.values()), "first": first + 1}


def _quarantined(row: dict, category: str) -> dict:
    raw = row.get("raw")
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    source = row.get("source")
    return {"reason": row.get("reason") or "", "category": category, "source": source,
            "file": Path(source).name if source else None, "line": row.get("line"),
            "raw": text if len(text) <= RAW_CHARS else text[:RAW_CHARS - 1] + "…"}


def page_number(text: str) -> int:
    """The ``page`` query parameter; anything but a positive number is the first page."""
    return int(text) if text.isdigit() and int(text) > 0 else 1


def version_page_context(registry, version_id: str, reason: str, number: int) -> dict:
    details = version_details(registry, version_id)
    folder = prepared_folder(details)
    return {"v": details, "folder": folder, "report": data_report(folder, details["report"]),
            "quarantine": quarantine_page(folder, reason, number)}


@router.get("/ui/datasets/{version_id}")
async def dataset_version_page(request: Request, version_id: str, reason: str = "",
                               shown_page: str = Query("1", alias="page"),
                               session: Session = Depends(needs(READ_RUNS))):
    try:
        context = await anyio.to_thread.run_sync(version_page_context, request.app.state.ui.registry, version_id,
                                                 reason, page_number(shown_page))
    except TunelabError as error:
        status = 404 if isinstance(error, NotFoundError) else 400
        return page(request, "error.html", session, status_code=status, title="Dataset", message=str(error))
    return page(request, "dataset_version.html", session, title=context["v"]["label"], **context)


@router.get("/ui/datasets/{version_id}/quarantine")
async def quarantine_fragment(request: Request, version_id: str, reason: str = "",
                              shown_page: str = Query("1", alias="page"),
                              session: Session = Depends(needs(READ_RUNS))):
    def load() -> dict:
        details = version_details(request.app.state.ui.registry, version_id)
        return {"v": details, "quarantine": quarantine_page(prepared_folder(details), reason,
                                                                 page_number(shown_page))}

    try:
        context = await anyio.to_thread.run_sync(load)
    except TunelabError as error:
        return partial(request, "dataset_quarantine.html", session, error=str(error), v=None, quarantine=None)
    return partial(request, "dataset_quarantine.html", session, error=None, **context)
