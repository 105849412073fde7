"""The Run page: curves and metrics in chromium, the predictions browser, a live run followed as it trains,
the server-sent events, the report-image route and unknown runs."""

from __future__ import annotations

import html
import json
import os
import re
import socket
import time
from pathlib import Path

from sqlalchemy import select

from tests.registry.fake_runs import eval_items, fake_run
from tests.ui.browser import log_in, screenshot
from tunelab.io import atomic_write_json, atomic_write_jsonl
from tunelab.registry.ingest import ingest_run
from tunelab.registry.queries import find_run
from tunelab.registry.schema import Run
from tunelab.runs.folder import RunFolder
from tunelab.runs.report import write_report
from tunelab.security import files as sealed
from tunelab.ui import run_detail


def run_id(dashboard, run: Path) -> str:
    with dashboard.registry.session() as db:
        return find_run(db, str(run)).id


def with_data_summary(run: Path) -> None:
    """A data_summary.json as a labeled run writes it, and report.md with its training_curve.png."""
    predictions = RunFolder(run).predictions()
    labels = sorted({row["reference"] for row in predictions})
    test_counts = {label: sum(row["reference"] == label for row in predictions) for label in labels}
    atomic_write_json(RunFolder(run).data_summary_path, {
        "kind": "labeled", "train": 40, "val": 8, "test": len(predictions), "quarantined": 1,
        "train_hash": "3f2a9c01d4e5b6a7", "val_hash": "77c0de12aa34bb56", "test_hash": "0b1c2d3e4f5a6b7c",
        "train_labels": {"negative": 22, "positive": 18}, "val_labels": {"negative": 4, "positive": 4},
        "test_labels": test_counts, "labels": labels,
        "lengths": {"train": {"mean": 38.5, "p95": 61, "max": 77}, "test": {"mean": 36.1, "p95": 58, "max": 70}}})
    write_report(run)


def with_long_input(run: Path, item: int) -> None:
    """Prediction ``item`` gets an input of several paragraphs, as a chat or summarization run would have."""
    rows = RunFolder(run).predictions()
    rows[item]["input"] = "\n\n".join(f"Paragraph {n}: " + "a long sentence of the held-out document " * 8
                                       for n in range(1, 6))
    atomic_write_jsonl(RunFolder(run).predictions_path, rows)


def flipped(run: Path, kind: str = "flipped") -> set[str]:
    """Ids of the run's predictions whose correctness changed from base to tuned (fixed, broken or either)."""
    wanted = {"flipped": {(False, True), (True, False)}, "fixed": {(False, True)}, "broken": {(True, False)}}[kind]
    return {str(row["id"]) for row in RunFolder(run).predictions()
            if (row["base_correct"], row["tuned_correct"]) in wanted}


def training_run(dashboard, steps: int = 6) -> Path:
    """A run that is training now (this test process is its trainer), recorded as running in the registry."""
    root = dashboard.root / "runs"
    run = fake_run(root, "live-lora", [True] * 4, eval_items(4), steps=steps)
    folder = RunFolder(run)
    for name in ("metrics.json", "predictions.jsonl", "artifacts.json"):
        (run / name).unlink()
    folder.mark_running()
    assert json.loads(folder.status_path.read_text())["host"] == socket.gethostname()
    assert json.loads(folder.status_path.read_text())["pid"] == os.getpid()
    folder.train_log_path.write_text("".join(log_line(step) for step in range(1, steps + 1)), encoding="utf-8")
    ingest_run(dashboard.registry, run, final=False)
    return run


def log_line(step: int) -> str:
    return json.dumps({"step": step, "epoch": step / 20, "loss": 2.0 / step ** 0.5, "learning_rate": 1e-4,
                       "tokens": 256 * step}) + "\n"


def append(run: Path, text: str) -> None:
    with RunFolder(run).train_log_path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def test_run_page_shows_curves_metrics_and_flipped_items(dashboard, browser_page):
    run = dashboard.runs["baseline"]
    with_data_summary(run)
    with_long_input(run, 1)
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then=f"/ui/runs/{run_id(dashboard, run)}")
    page.wait_for_selector("#loss-chart .uplot canvas")
    legend = page.locator("#loss-chart .u-legend").inner_text()
    assert "train loss" in legend and "validation loss" in legend
    assert "learning rate" in page.locator("#lr-chart .u-legend").inner_text()
    points = page.evaluate("window.runPage.curves.charts.loss.chart().data[0].length")
    assert points == 40  # one x per step
    header = page.locator(".run-head").inner_text()
    assert "baseline-lora" in header and "finished" in header and "lora" in header
    metrics = page.locator("[data-testid=metrics-table]").inner_text()
    assert "accuracy" in metrics and "0.3333" in metrics and "0.5833" in metrics and "+0.25" in metrics
    assert "[" in metrics  # 95% intervals from the 24 held-out answers
    assert page.locator("#compare-with").get_attribute("href").startswith("/ui/compare?runs=")
    screenshot(page, "run-detail")

    page.click("#x-axis button[data-x=epoch]")
    page.wait_for_function("document.querySelector('#loss-chart .u-legend').innerText.includes('epoch')")

    page.click("a[data-tab=predictions]")
    page.click("[data-filter=flipped]")
    page.wait_for_function("document.querySelector('[data-filter=flipped]').classList.contains('on')")
    shown = set(page.locator("[data-testid=predictions-table] tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.item)"))
    assert shown == flipped(run) and len(shown) == 10
    assert page.locator("[data-count=flipped]").inner_text() == "10"
    long_cell = page.locator("tr[data-item='1'] td.text").first
    clamped = long_cell.locator(".clamp").bounding_box()["height"]
    screenshot(page, "run-detail-predictions")
    long_cell.locator(".clamp-toggle").click()
    assert long_cell.locator(".clamp").bounding_box()["height"] > 2 * clamped
    page.fill("input[name=q]", "review 9:")  # 9 and 19 match; only 9 flipped
    page.wait_for_function("document.querySelectorAll('[data-testid=predictions-table] tbody tr').length === 1")
    assert page.locator("[data-testid=predictions-table] tbody tr").get_attribute("data-item") == "9"
    assert "on" in page.locator("[data-filter=flipped]").get_attribute("class")

    page.click("a[data-tab=data]")
    assert "positive" in page.locator("[data-testid=label-balance]").inner_text()
    page.wait_for_function("[...document.querySelectorAll('.report-images img')].some(i => i.naturalWidth > 0)")
    screenshot(page, "run-detail-data")
    page.click("a[data-tab=config]")
    assert "run_name: baseline-lora" in page.locator("[data-testid=config-yaml]").inner_text()
    screenshot(page, "run-detail-config")


def test_predictions_filters_search_and_pages_on_the_server(dashboard):
    run = dashboard.runs["wider"]
    viewer = dashboard.http("viewer")
    url = f"/ui/runs/{run_id(dashboard, run)}/predictions"
    for kind in ("fixed", "broken", "flipped"):
        answer = viewer.get(url, params={"filter": kind})
        assert answer.status_code == 200
        assert set(item_ids(answer.text)) == flipped(run, kind)
    wrong = {str(r["id"]) for r in RunFolder(run).predictions() if not r["tuned_correct"]}
    assert set(item_ids(viewer.get(url, params={"filter": "wrong"}).text)) == wrong
    first, second = (viewer.get(url, params={"filter": "all", "page": n}).text for n in (1, 2))
    assert len(item_ids(first)) == 20 and len(item_ids(second)) == 4  # 24 items, 20 a page
    assert "of 24" in first
    one = RunFolder(run).predictions()[7]["input"]
    found = viewer.get(url, params={"q": one.split()[-1].upper()}).text  # a word only item 7 has, case ignored
    assert item_ids(found) == ["7"]
    assert "No broken predictions matching" in viewer.get(url, params={"filter": "broken", "q": "zzz"}).text


def item_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-item="([^"]+)"', html)


def test_live_run_grows_its_curve_then_finishes(dashboard, browser_page):
    run = training_run(dashboard)
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then=f"/ui/runs/{run_id(dashboard, run)}")
    page.wait_for_selector("#loss-chart .uplot canvas")
    assert page.locator("#run-status").inner_text() == "running"
    assert page.locator("#live-badge").is_visible()
    count = "window.runPage.curves.charts.loss.chart().data[0].length"
    assert page.evaluate(count) == 6
    append(run, log_line(7) + log_line(8))
    page.wait_for_function(f"{count} === 8")
    append(run, log_line(9) + json.dumps({"step": 9, "val_loss": 0.9, "epoch": 0.45, "tokens": 2304}) + "\n")
    page.wait_for_function(f"{count} === 9")
    page.wait_for_function("document.querySelector('#loss-chart .u-legend').innerText.includes('validation loss')")
    assert page.locator("#stat-step").inner_text() == "9"
    screenshot(page, "run-detail-live")
    RunFolder(run).mark_ended("finished")
    page.wait_for_function("document.querySelector('#run-status').textContent === 'finished'")
    assert "status-finished" in page.locator("#run-status").get_attribute("class")
    assert page.locator("#run-ended").is_visible()


def test_events_send_only_new_whole_lines_then_the_end(dashboard):
    run = training_run(dashboard)
    size = RunFolder(run).train_log_path.stat().st_size
    viewer = dashboard.http("viewer")
    with viewer.stream("GET", f"/ui/runs/{run_id(dashboard, run)}/events", params={"offset": size},
                       timeout=15) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache" and stream.headers["x-accel-buffering"] == "no"
        events = sse_events(stream.iter_lines())
        assert next(events) == ("status", {"status": "running"})
        half = log_line(8)[:20]
        append(run, log_line(7) + half)
        assert next(events) == ("rows", [json.loads(log_line(7))])  # not the old rows, not half of step 8
        append(run, log_line(8)[20:])
        RunFolder(run).mark_ended("finished")
        rest = list(events)  # the stream ends by itself
    assert rest == [("rows", [json.loads(log_line(8))]), ("status", {"status": "finished"})]


def sse_events(lines):
    """(event, data) of each server-sent event, comments and ids skipped."""
    event, data = None, None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and event is not None:
            yield event, data
            event, data = None, None


def test_files_route_serves_report_images_only(dashboard):
    run = dashboard.runs["baseline"]
    with_data_summary(run)
    (run / "not-in-report.png").write_bytes((run / "training_curve.png").read_bytes())
    viewer = dashboard.http("viewer")
    base = f"/ui/runs/{run_id(dashboard, run)}/files"
    image = viewer.get(f"{base}/training_curve.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("config.yaml", "predictions.jsonl", "not-in-report.png", "..%2Fwider-lora%2Ftraining_curve.png",
                 "%2E%2E/%2E%2E/etc/passwd", "/etc/passwd", "report.md"):
        refused = viewer.get(f"{base}/{name}")
        assert refused.status_code == 404, name
        assert "PNG" not in refused.text and "run_name" not in refused.text


def test_unknown_run_is_one_line_404_and_names_and_prefixes_work(dashboard):
    viewer = dashboard.http("viewer")
    missing = viewer.get("/ui/runs/no-such-run")
    assert missing.status_code == 404
    message = html.unescape(re.search(r'<p class="alert error"[^>]*>(.*?)</p>', missing.text, re.S).group(1))
    assert message.startswith("no run 'no-such-run' in the registry") and "\n" not in message
    run = run_id(dashboard, dashboard.runs["wider"])
    for ref in (run, run[:8], "wider-lora"):
        answer = viewer.get(f"/ui/runs/{ref}")
        assert answer.status_code == 200 and "wider-lora" in answer.text, ref
    assert viewer.get("/ui/runs/no-such-run/events").status_code == 404
    assert dashboard.http("inference").get(f"/ui/runs/{run}").status_code == 403


def test_a_ref_is_never_read_as_a_folder_path(dashboard, monkeypatch):
    """A run folder beside the server that the registry does not know stays unread and unrecorded."""
    fake_run(dashboard.root / "runs", "stray-run", [True] * 4, eval_items(4))
    monkeypatch.chdir(dashboard.root / "runs")
    assert dashboard.http("viewer").get("/ui/runs/stray-run").status_code == 404
    with dashboard.registry.session() as db:
        assert not db.scalars(select(Run).where(Run.name == "stray-run")).all()


def test_events_stop_when_the_browser_goes_away(dashboard, monkeypatch):
    streams = {"open": 0, "closed": 0}
    follow = run_detail.live_events

    async def counted(*args, **kwargs):
        streams["open"] += 1
        try:
            async for event in follow(*args, **kwargs):
                yield event
        finally:
            streams["closed"] += 1

    monkeypatch.setattr(run_detail, "live_events", counted)
    run = training_run(dashboard)
    with dashboard.http("viewer").stream("GET", f"/ui/runs/{run_id(dashboard, run)}/events") as stream:
        events = sse_events(stream.iter_lines())
        assert next(events)[0] == "rows" and next(events) == ("status", {"status": "running"})
    deadline = time.monotonic() + 10
    while streams["closed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams == {"open": 1, "closed": 1}  # the run still trains: only the disconnect ended it


def test_encrypted_run_files_are_read_with_the_key_and_refused_in_one_line_without(dashboard, monkeypatch):
    run = dashboard.runs["wider"]
    with_data_summary(run)
    rows = RunFolder(run).predictions()
    monkeypatch.setenv("TUNELAB_KEY", os.urandom(32).hex())
    sealed.write_jsonl(RunFolder(run).predictions_path, rows)
    sealed.write_bytes(run / "training_curve.png", (run / "training_curve.png").read_bytes())
    assert RunFolder(run).predictions_path.read_bytes()[:4] != b'{"id'
    viewer = dashboard.http("viewer")
    ref = run_id(dashboard, run)
    assert len(item_ids(viewer.get(f"/ui/runs/{ref}/predictions").text)) == 20
    assert viewer.get(f"/ui/runs/{ref}/files/training_curve.png").content[:4] == b"\x89PNG"
    monkeypatch.delenv("TUNELAB_KEY")
    refused = viewer.get(f"/ui/runs/{ref}")
    assert refused.status_code == 409 and "is encrypted; set TUNELAB_KEY" in html.unescape(refused.text)
