"""The Datasets pages: the list of versions, one prepared version's data report and its quarantine browser."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ui.browser import log_in, screenshot
from tunelab.cli import main
from tunelab.registry.ingest import record_prepared
from tunelab.ui.datasets import QUARANTINE_PAGE, quarantine_page

LONG = ("the hotel room was bright and quiet with a wide window over the old harbour and the staff at the desk "
        "helped us find a table for dinner on the first night")


def raw_reviews(path: Path) -> Path:
    """A small labeled file with one row holding an email address, an exact duplicate, a near duplicate of
    a long row, and a line that is not JSON."""
    adjectives = {"positive": ["wonderful", "excellent", "lovely"], "negative": ["awful", "dreadful", "noisy"]}
    rows = []
    for i in range(36):
        label = "positive" if i % 3 else "negative"
        extra = " ".join(f"detail{i * 5 + k}" for k in range(i % 11 + 1))
        rows.append(json.dumps({"text": f"stay {i} was {adjectives[label][i % 3]} {extra}", "label": label}))
    rows.append(json.dumps({"text": LONG, "label": "positive"}))
    rows.append(json.dumps({"text": "please mail jane.doe@example.com about the refund", "label": "negative"}))
    rows.append(rows[4])  # an exact duplicate
    rows.append(json.dumps({"text": LONG + " again", "label": "positive"}))  # a near duplicate
    rows.append('{"text": "a row cut short')  # not JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def prepared_version(dashboard) -> int:
    """`tunelab data prepare` on the raw file (it records the version), recorded again by hand: the same one."""
    raw = raw_reviews(dashboard.root / "raw" / "reviews.jsonl")
    out = dashboard.root / "prepared" / "reviews"
    assert main(["data", "prepare", str(raw), "--out", str(out), "--seed", "7"]) == 0
    version = record_prepared(dashboard.registry, out)
    assert version.origin == "prepare" and version.rows["train"] > 0
    return version.id


def test_datasets_list_and_a_prepared_version_in_chromium(dashboard, browser_page):
    version_id = prepared_version(dashboard)
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then="/ui/datasets")
    table = page.locator("[data-testid=datasets-table]")
    text = table.inner_text()
    assert "reviews" in text and "prepare" in text
    assert "baseline-lora" in text and "wider-lora" in text  # the runs' own splits, with links to the runs
    row = page.locator(f"tr[data-version='{version_id}']")
    counts = [int(c) for c in row.locator("td.num").all_inner_texts()]
    assert sum(counts) == 38  # 41 lines read: the bad line, the duplicate and the near duplicate removed
    screenshot(page, "datasets")

    row.locator("a.strong").click()
    page.wait_for_load_state("networkidle")
    assert page.url.endswith(f"/ui/datasets/{version_id}")
    bars = page.locator("[data-testid=length-histogram] svg rect.seg")
    assert bars.count() >= 3
    stats = page.locator("[data-testid=length-histogram] table").inner_text()
    assert "train" in stats and "median" in stats
    assert "email" in page.locator("[data-testid=pii]").inner_text()
    duplicates = page.locator("[data-testid=duplicates] .value").all_inner_texts()
    assert duplicates == ["1", "1", "0"]  # exact, near, leaks
    balance = page.locator("[data-testid=label-balance]").inner_text()
    assert "positive" in balance and "negative" in balance
    quarantine = page.locator("[data-testid=quarantine-table]").inner_text()
    for reason in ("invalid JSON", "exact duplicate", "near duplicate"):
        assert reason in quarantine
    assert "reviews.jsonl:41" in quarantine  # file:line of the bad line
    screenshot(page, "dataset-version")

    page.select_option("[data-testid=quarantine-filter]", "invalid JSON")
    page.wait_for_function("document.querySelectorAll('[data-testid=quarantine-table] tbody tr').length === 1")
    assert "a row cut short" in page.locator("[data-testid=quarantine-table]").inner_text()


def test_a_run_version_says_what_is_known_and_errors_are_one_line(dashboard):
    viewer = dashboard.http("viewer")
    listing = viewer.get("/ui/datasets")
    assert listing.status_code == 200
    run_version = listing.text.split("data-version=\"", 2)[1].split("\"", 1)[0]
    detail = viewer.get(f"/ui/datasets/{run_version}")
    assert detail.status_code == 200 and 'data-testid="no-folder"' in detail.text
    assert "not made by" in detail.text and "/ui/runs/" in detail.text
    assert viewer.get("/ui/datasets/not-a-number").status_code == 404
    missing = viewer.get("/ui/datasets/9999")
    assert missing.status_code == 404 and "no dataset version with id 9999" in missing.text
    assert "Traceback" not in missing.text
    assert dashboard.http("inference").get("/ui/datasets").status_code == 403


def test_quarantine_fragment_filters_and_pages(dashboard, tmp_path):
    version_id = prepared_version(dashboard)
    viewer = dashboard.http("viewer")
    fragment = viewer.get(f"/ui/datasets/{version_id}/quarantine", params={"reason": "exact duplicate"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "exact duplicate of" in fragment.text and "invalid JSON:" not in fragment.text
    folder = tmp_path / "many"
    folder.mkdir()
    rows = [{"source": "in.jsonl", "line": n, "reason": "too short: 1 tokens" if n % 2 else "invalid JSON: x",
             "raw": f"<b>row {n}</b>"} for n in range(1, 61)]
    (folder / "quarantine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    second = quarantine_page(folder, "invalid JSON", 2)
    assert second["matched"] == 30 and second["pages"] == 2 and len(second["rows"]) == 30 - QUARANTINE_PAGE
    assert [r["line"] for r in second["rows"]][:2] == [52, 54]
    assert dict(second["categories"]) == {"invalid JSON": 30, "too short": 30}
