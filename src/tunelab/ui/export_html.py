"""``tunelab runs export-html RUN --out FILE.html``: one run as a single HTML file that works opened from disk.

The file holds everything it shows: the run's summary, its curves (uPlot, the shared chart code and the
train_log.jsonl rows, all inlined), the metrics table, the first ``PREDICTIONS_SHOWN`` predictions with a
filter that runs in the browser, its config and its data summary. It loads nothing (no external URL, no
fetch; its Content-Security-Policy forbids both), so it can be mailed, archived or opened offline. It reads
only the run folder: no registry is needed.

The predictions are user content: the JSON that carries them escapes ``<``, ``>`` and ``&`` so no text can
close its script block, the page puts text on screen with textContent only, and the file is written with
``security.files.write_text``: atomically, and encrypted under the master key when one is set (like
report.md, which quotes the same rows; ``tunelab cat FILE.html > plain.html`` gives a copy a browser opens).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from markupsafe import Markup

import tunelab
from tunelab.errors import TunelabError
from tunelab.runs.folder import RunFolder
from tunelab.security import files as sealed
from tunelab.ui.render import STATIC, templates
from tunelab.ui.run_view import FILTER_LABELS, RunView, prediction_cells, read_run_view

PREDICTIONS_SHOWN = 500
STYLES = ("vendor/uplot/uPlot.min.css", "css/tunelab.css", "css/run.css")
SCRIPTS = ("vendor/uplot/uPlot.iife.min.js", "js/tunelab.js", "js/run.js")
CLOSING_TAG = re.compile(r"</(script|style)", re.IGNORECASE)


def export_run_html(run_path: Path, out: Path) -> Path:
    """Write the run folder ``run_path`` as the self-contained page ``out``; returns ``out``."""
    run_path, out = Path(run_path), Path(out)
    if not RunFolder.is_run(run_path):
        raise TunelabError(f"{run_path} is not a run folder (no config.yaml); pass a folder made by tunelab train")
    sealed.write_text(out, render_export(read_run_view(run_path)))
    return out


def render_export(view: RunView, limit: int = PREDICTIONS_SHOWN) -> str:
    """The page's HTML."""
    rows = [prediction_cells(row, i) for i, row in enumerate(view.predictions[:limit])]
    return templates.env.get_template("run_export.html").render(
        view=view, predictions=rows, total_predictions=len(view.predictions),
        filters=FILTER_LABELS,
        styles=inline(STYLES), scripts=inline(SCRIPTS), started=local_time(view.status.started),
        exported=local_time(time.time()), version=tunelab.__version__)


def inline(names: tuple[str, ...]) -> list[Markup]:
    """Our own static files' text, ready to sit inside a <style> or <script> element (no closing tag in them)."""
    return [Markup(CLOSING_TAG.sub(r"<\\/\1", (STATIC / name).read_text(encoding="utf-8"))) for name in names]


def local_time(seconds: float | None) -> str | None:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return None
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))
