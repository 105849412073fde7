"""``tunelab runs export-html``: one self-contained page per run, safe with hostile text, working from disk offline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tests.registry.fake_runs import eval_items, fake_run
from tests.ui.browser import screenshot
from tests.ui.conftest import with_curves
from tests.ui.test_run_detail import flipped, with_data_summary, with_long_input
from tunelab.io import atomic_write_jsonl
from tunelab.runs.folder import RunFolder
from tunelab.security import files as sealed
from tunelab.security.crypto import is_encrypted
from tunelab.ui.export_html import export_run_html

HOSTILE = "</script><script>alert(1)</script>"


def exported_run(tmp_path: Path) -> Path:
    """A finished run of 24 items with curves, a data summary, a long input, and a hostile input at item 3."""
    items = eval_items(24)
    run = fake_run(tmp_path / "runs", "export-lora", [2 <= i % 12 <= 10 for i in range(24)], items,
                   base_correct=[i % 3 == 0 for i in range(24)], steps=30)
    with_curves(run, 30, 1.0)
    with_data_summary(run)
    with_long_input(run, 5)
    rows = RunFolder(run).predictions()
    rows[3]["input"] = f"review {HOSTILE} & <b>bold</b>"
    atomic_write_jsonl(RunFolder(run).predictions_path, rows)
    return run


def test_export_is_one_file_with_curves_and_escaped_predictions(tmp_path):
    run = exported_run(tmp_path)
    out = export_run_html(run, tmp_path / "out" / "export-lora.html")
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "@import" not in text  # styles and scripts are inlined
    data = json.loads(re.search(r'<script type="application/json" id="run-data">(.*?)</script>', text, re.S).group(1))
    assert sum("val_loss" in r for r in data["rows"]) == 6 and sum("loss" in r for r in data["rows"]) == 30
    predictions = json.loads(
        re.search(r'<script type="application/json" id="run-predictions">(.*?)</script>', text, re.S).group(1))
    assert len(predictions) == 24 and predictions[3]["input"] == f"review {HOSTILE} & <b>bold</b>"
    assert HOSTILE not in text and "<b>bold</b>" not in text
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in text
    assert "accuracy" in text and "run_name" in text and "uPlot" in text


def test_export_opens_from_disk_with_no_network(tmp_path, chromium):
    run = exported_run(tmp_path)
    out = export_run_html(run, tmp_path / "export-lora.html")
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    requested, dialogs = [], []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (requested.append(route.request.url), route.abort()))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(out.resolve().as_uri())
        page.wait_for_selector("#loss-chart .uplot canvas")
        legend = page.locator("#loss-chart .u-legend").inner_text()
        assert "train loss" in legend and "validation loss" in legend
        assert "accuracy" in page.locator("[data-testid=metrics-table]").inner_text()
        assert page.locator("#export-predictions tbody tr").count() == 24
        hostile = page.locator("#export-predictions tbody tr[data-item='3'] td.text").first.inner_text()
        assert HOSTILE in hostile  # shown as text, not run
        screenshot(page, "export-html")
        page.click("#export-filters [data-filter=flipped]")
        shown = set(page.locator("#export-predictions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.item)"))
        assert shown == flipped(run)
        page.fill("#export-search", "ALERT(1)")
        assert "3" not in flipped(run) and page.locator("#export-predictions tbody tr").count() == 0
        page.click("#export-filters [data-filter=all]")
        items = page.locator("#export-predictions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.item)")
        assert items == ["3"]
        assert requested == [] and dialogs == []
    finally:
        context.close()


def test_export_is_sealed_under_a_master_key(tmp_path, monkeypatch):
    run = exported_run(tmp_path)
    monkeypatch.setenv("TUNELAB_KEY", os.urandom(32).hex())
    out = export_run_html(run, tmp_path / "sealed.html")
    assert is_encrypted(out.read_bytes()[:16])
    assert "run-predictions" in sealed.read_text(out)
