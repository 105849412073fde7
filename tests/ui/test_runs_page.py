"""The login page and the Runs page, in a real chromium and over plain HTTP."""

from __future__ import annotations

from tests.ui.browser import log_in, screenshot


def test_runs_page_lists_two_runs(dashboard, browser_page):
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then="/ui/runs")
    rows = page.locator("[data-testid=runs-table] tbody tr")
    assert rows.count() == 2
    text = page.locator("[data-testid=runs-table]").inner_text()
    assert "baseline-lora" in text and "wider-lora" in text and "finished" in text
    assert "0.75" in text  # wider-lora's tuned accuracy, 18 of 24
    screenshot(page, "runs")
    page.fill("input[name=q]", "wider")
    page.wait_for_function("document.querySelectorAll('[data-testid=runs-table] tbody tr').length === 1")
    names = page.locator("[data-testid=runs-table] tbody td a.strong").all_inner_texts()
    assert names == ["wider-lora"]


def test_no_page_without_a_key(dashboard):
    anonymous = dashboard.http()
    answer = anonymous.get("/ui/runs")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")
    refused = anonymous.post("/ui/login", data={"key": "tl-not-a-real-key", "next": "/ui/runs"})
    assert refused.status_code == 401 and "not valid" in refused.text
    assert "tunelab_session" not in refused.cookies


def test_cookie_is_http_only_and_strict(dashboard):
    client = dashboard.http()
    answer = client.post("/ui/login", data={"key": dashboard.keys["viewer"], "next": "https://evil.example/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"  # no open redirect
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_viewer_sees_no_new_run_link_and_inference_key_no_runs(dashboard):
    viewer = dashboard.http("viewer")
    page = viewer.get("/ui/runs")
    assert page.status_code == 200 and "baseline-lora" in page.text
    assert 'href="/ui/new"' not in page.text
    trainer = dashboard.http("trainer")
    assert 'href="/ui/new"' in trainer.get("/ui/runs").text
    inference = dashboard.http("inference")
    refused = inference.get("/ui/runs")
    assert refused.status_code == 403 and "runs:read" in refused.text


def test_sort_and_filter_on_the_server(dashboard):
    viewer = dashboard.http("viewer")
    table = viewer.get("/ui/runs/table", params={"sort": "name", "order": "asc"}).text
    assert table.index("baseline-lora") < table.index("wider-lora")
    table = viewer.get("/ui/runs/table", params={"sort": "metric", "order": "desc"}).text
    assert table.index("wider-lora") < table.index("baseline-lora")
    assert "No runs match" in viewer.get("/ui/runs/table", params={"status": "running"}).text


def test_pages_refuse_framing_and_sniffing(dashboard):
    viewer = dashboard.http("viewer")
    for path in ("/ui/runs", "/ui/login", "/ui/static/css/tunelab.css"):
        headers = viewer.get(path).headers
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "same-origin"
    assert "x-frame-options" not in viewer.get("/health").headers  # only the dashboard's own responses
