"""The Compare page: the two fixture runs side by side in a real chromium (curves, config diff, paired test,
flips), and its refusals over plain HTTP."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.ui.browser import log_in, screenshot
from tunelab.registry.compare import flatten
from tunelab.registry.queries import list_runs
from tunelab.registry.stats import mcnemar_exact

BASELINE_RIGHT = [i % 12 < 7 for i in range(24)]  # as tests/ui/conftest.py's two_runs writes them
WIDER_RIGHT = [2 <= i % 12 <= 10 for i in range(24)]
COMPARE = "/ui/compare?runs=baseline-lora&runs=wider-lora"


def flat_configs(dashboard) -> list[dict]:
    """Both runs' config.yaml as written in their folders, flattened (train.learning_rate...)."""
    return [flatten(yaml.safe_load((dashboard.runs[name] / "config.yaml").read_text(encoding="utf-8")))
            for name in ("baseline", "wider")]


def visible_keys(page) -> list[str]:
    rows = page.locator("[data-testid=config-diff] tbody tr[data-key]")
    return [rows.nth(i).get_attribute("data-key") for i in range(rows.count()) if rows.nth(i).is_visible()]


def flipped_items(page, direction: str) -> list[int]:
    """The fixture item numbers ("test review 13: ...") of the flip rows of ``direction`` that are visible."""
    rows = page.locator(f"[data-testid=flips] tr[data-flip={direction}]")
    texts = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count()) if rows.nth(i).is_visible()]
    return sorted(int(re.match(r"test review (\d+):", text).group(1)) for text in texts)


def test_compare_two_runs_in_chromium(dashboard, browser_page):
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then="/ui/runs")
    page.goto(dashboard.url + COMPARE)

    # 3. curves: one chart, both runs in its legend, points drawn; the x axis switches to tokens
    page.wait_for_function("window.tunelabCompare && tunelabCompare.loss.chart() && tunelabCompare.rate.chart()")
    legend = page.locator("#loss-chart .u-legend").inner_text()
    assert "baseline-lora · train loss" in legend and "wider-lora · validation loss" in legend
    assert page.evaluate("tunelabCompare.loss.chart().data[0].length") == 40
    assert page.evaluate("tunelabCompare.loss.chart().series.length") == 5  # x + 2 runs x (loss, val_loss)
    assert "wider-lora" in page.locator("#lr-chart .u-legend").inner_text()

    # 1. config diff: the differing keys only while the switch is on, every key when off
    configs = flat_configs(dashboard)
    every_key = set(configs[0]) | set(configs[1])
    differing = {k for k in every_key if configs[0].get(k, KeyError) != configs[1].get(k, KeyError)}
    assert "run_name" in differing and "train.learning_rate" not in differing
    assert page.is_checked("#only-differences")
    assert set(visible_keys(page)) == differing
    changed = page.locator("[data-testid=config-diff] tr[data-key=run_name]").inner_text()
    assert "baseline-lora" in changed and "wider-lora" in changed

    # 2. the paired test is the exact McNemar test of the two runs' right/wrong items
    expected = mcnemar_exact(WIDER_RIGHT, BASELINE_RIGHT, metric="accuracy")
    verdict = page.locator("[data-testid=paired-tests] li[data-run=wider-lora][data-metric=accuracy]")
    for attribute, value in (("delta", expected.delta), ("low", expected.low), ("high", expected.high),
                             ("p", expected.p_value)):
        assert float(verdict.get_attribute(f"data-{attribute}")) == pytest.approx(value, abs=1e-12)
    sentence = verdict.inner_text()
    assert f"+{expected.delta:.2f} [{expected.low:+.2f}, {expected.high:+.2f}]" in sentence
    assert f"p={expected.p_value:.2g} on 24 shared items" in sentence
    assert "alone on 8" in sentence and "alone on 4" in sentence
    metrics = page.locator("[data-testid=metric-deltas] tr[data-metric=accuracy]").inner_text()
    assert "0.5833" in metrics and "0.75" in metrics and "+0.167" in metrics

    # 4. flips: exactly the items baseline-lora had right and wider-lora wrong, and the reverse
    flips = page.locator("[data-testid=flips]")
    counts = flips.locator(".flip-counts").inner_text()
    assert re.search(r"both right\s*10", counts) and re.search(r"both wrong\s*2", counts)
    lost = [i for i in range(24) if BASELINE_RIGHT[i] and not WIDER_RIGHT[i]]
    gained = [i for i in range(24) if WIDER_RIGHT[i] and not BASELINE_RIGHT[i]]
    assert flipped_items(page, "lost") == lost and len(lost) == 4
    assert flipped_items(page, "gained") == gained and len(gained) == 8
    row = flips.locator("tr[data-flip=lost]").first.inner_text()
    assert "negative" in row and "positive" in row  # the reference and both answers side by side
    screenshot(page, "compare")

    page.click("[data-testid=flips] .flip-filter button[data-show=lost]")
    assert flipped_items(page, "lost") == lost and flipped_items(page, "gained") == []
    page.click("[data-testid=flips] .flip-filter button[data-show=gained]")
    assert flipped_items(page, "lost") == [] and flipped_items(page, "gained") == gained

    page.uncheck("#only-differences")
    assert set(visible_keys(page)) == every_key and len(every_key) > len(differing)
    page.click("#x-axis button[data-x=tokens]")
    assert page.evaluate("tunelabCompare.loss.chart().data[0].at(-1)") == 512 * 40
    assert "trained tokens" in page.locator("#loss-chart").inner_text()


def test_picker_ticks_runs_and_compares(dashboard, browser_page):
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then="/ui/compare?runs=wider-lora")
    assert page.locator("[data-testid=compare-picker] tbody tr").count() == 2
    assert "at least two" in page.locator(".alert.warn").inner_text()
    assert page.is_disabled("#compare-picked")
    page.check("[data-testid=compare-picker] input[aria-label='select baseline-lora']")
    page.click("#compare-picked")
    page.wait_for_selector("[data-testid=flips]")
    assert "wider-lora" in page.locator("[data-testid=compare-runs]").inner_text()


def test_unknown_run_is_one_line_404(dashboard):
    viewer = dashboard.http("viewer")
    answer = viewer.get("/ui/compare", params={"runs": ["baseline-lora", "no-such-run"]})
    assert answer.status_code == 404
    errors = re.findall(r'<p class="alert error"[^>]*>(.*?)</p>', answer.text, re.S)
    assert len(errors) == 1 and "no-such-run" in errors[0] and "\n" not in errors[0].strip()
    assert "Traceback" not in answer.text
    assert re.search(r'aria-label="select baseline-lora"\s*checked', answer.text)  # the known run stays ticked


def test_a_folder_path_is_never_read(dashboard, tmp_path):
    from tests.registry.fake_runs import eval_items, fake_run

    stray = fake_run(tmp_path / "elsewhere", "stray", [True] * 4, eval_items(4))
    viewer = dashboard.http("viewer")
    answer = viewer.get("/ui/compare", params={"runs": [str(stray), "wider-lora"]})
    assert answer.status_code == 404 and "by id or name" in answer.text
    with dashboard.registry.session() as db:
        assert "stray" not in {run["name"] for run in list_runs(db)}


def test_who_may_look(dashboard):
    for role in ("viewer", "trainer", "admin"):
        answer = dashboard.http(role).get(COMPARE)
        assert answer.status_code == 200 and "Flipped items" in answer.text, role
    assert dashboard.http("inference").get(COMPARE).status_code == 403
    assert dashboard.http().get(COMPARE).status_code == 303  # to the login page


def test_three_runs_one_never_evaluated(dashboard):
    from tests.registry.fake_runs import eval_items, fake_run
    from tunelab.registry.ingest import ingest_run

    folder = fake_run(dashboard.root / "runs", "cut-short", [True] * 24, eval_items(24), status="killed")
    for name in ("predictions.jsonl", "metrics.json", "train_log.jsonl"):
        (folder / name).unlink()
    ingest_run(dashboard.registry, folder)
    viewer = dashboard.http("viewer")
    answer = viewer.get("/ui/compare", params={"runs": ["baseline-lora", "wider-lora", "cut-short"]})
    assert answer.status_code == 200
    assert answer.text.count('data-testid="flips"') == 2
    assert "cut-short has no per-item results" in answer.text
    assert answer.text.count('<li class="verdict') == 1  # no test for the run without results


def test_long_texts_are_clamped_and_expand(dashboard, browser_page):
    from tests.registry.fake_runs import fake_run
    from tunelab.data.records import Record
    from tunelab.registry.ingest import ingest_run

    long_items = [Record("labeled", text=f"item {i}: " + "a long customer message that goes on " * 40,
                         label="positive" if i % 2 else "negative") for i in range(4)]
    root = dashboard.root / "long"
    for name, right in (("long-a", [True, True, False, False]), ("long-b", [False, True, True, False])):
        ingest_run(dashboard.registry, fake_run(root, name, right, long_items))
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then="/ui/runs")
    page.goto(dashboard.url + "/ui/compare?runs=long-a&runs=long-b")
    cell = page.locator("[data-testid=flips] tr[data-flip=lost] td.flip-input")
    clamp = cell.locator(".clamp")
    short = clamp.evaluate("e => e.clientHeight")
    assert clamp.evaluate("e => e.scrollHeight") > short  # cut at four lines
    cell.locator("button.clamp-toggle").click()
    assert clamp.evaluate("e => e.clientHeight") > 3 * short
    assert cell.locator("button.clamp-toggle").inner_text() == "less"
