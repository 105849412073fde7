"""The Playground, against a real server in a thread (the tiny base, taught a few answers, and a LoRA adapter
that answers them as a film critic: ``served_models.py``), and ``tunelab serve --ui``: the dashboard mounted on
the API server itself.

The dashboard and the server share the test's registry (both open the default one under the test's
TUNELAB_HOME), so the server's keys log in to the dashboard."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.ui.browser import log_in, screenshot
from tests.ui.served_models import (ADAPTER, ANSWERS, BASE, QUESTION, dashboard_for, model_home,  # noqa: F401
                                    models_served)
from tunelab.registry.serving import feedback_rows
from tunelab.serve.local import app_in_thread, free_port
from tunelab.ui.playground import DEFAULT_SYSTEM


@pytest.fixture
def served(model_home):  # noqa: F811 (model_home: the fixture imported above)
    with models_served(model_home) as running:
        yield running


@pytest.fixture
def playground(served, tmp_path):
    with dashboard_for(served.url, served.keys, tmp_path) as dashboard:
        yield dashboard


def csrf_of(client: httpx.Client, page: str = "/ui/playground") -> str:
    text = client.get(page).text
    return text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def stream_events(client: httpx.Client, model: str, **body) -> list[dict | str]:
    """The ``data:`` events of one stream from the dashboard, as JSON ("[DONE]" as itself)."""
    messages = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": QUESTION}]
    ask = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": 12, **body}
    events = []
    csrf = {"X-CSRF-Token": csrf_of(client)}
    with client.stream("POST", "/ui/api/playground/stream", json=ask, headers=csrf) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_stream_route_relays_the_servers_chunks_as_they_come(playground):
    events = stream_events(playground.http("trainer"), ADAPTER)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert sum(1 for p in pieces if p) >= 5  # token by token, not one answer at the end
    assert "".join(p for p in pieces if p) == ANSWERS[QUESTION][1][:len("".join(p for p in pieces if p))]
    assert all(c["model"] == ADAPTER for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")


def test_the_page_lists_the_servers_models(playground):
    page = playground.http("inference").get("/ui/playground")
    assert page.status_code == 200
    assert f'value="{BASE}"' in page.text and f'value="{ADAPTER}"' in page.text
    assert "2 models served by" in page.text


def test_two_columns_stream_side_by_side_and_take_a_rating(playground, browser_page):
    page = browser_page
    log_in(page, playground.url, playground.keys["trainer"], then="/ui/playground")
    for box in page.locator("input[name=model]").all():
        box.set_checked(box.get_attribute("value") in (BASE, ADAPTER))
    page.fill("#pg-user", QUESTION)
    page.fill("input[name=seed]", "7")
    page.click("#pg-send")
    page.wait_for_selector(".pg-column[data-state=streaming]")  # a column is open before its answer ends
    page.wait_for_function("document.querySelectorAll('.pg-column[data-state=done]').length === 2")
    columns = page.locator(".pg-column")
    assert [columns.nth(i).get_attribute("data-model") for i in range(2)] == [BASE, ADAPTER]
    base, critic = (columns.nth(i).locator(".pg-text").inner_text() for i in range(2))
    assert base == ANSWERS[QUESTION][0] and critic == ANSWERS[QUESTION][1]
    assert int(columns.nth(0).locator(".pg-tokens").inner_text()) >= 20
    assert columns.nth(0).locator(".pg-ttft").inner_text().endswith("ms")
    assert columns.nth(1).locator(".pg-speed").inner_text().endswith("tok/s")
    columns.nth(0).locator(".pg-up").click()
    columns.nth(1).locator(".pg-down").click()
    page.wait_for_function("[...document.querySelectorAll('.pg-rated')].every(e => e.textContent === 'recorded')")
    screenshot(page, "playground")
    with playground.registry.session() as db:
        rated = {(r["rating"], r["served_model"]) for r in feedback_rows(db)}
    assert rated == {("up", BASE), ("down", ADAPTER)}


def test_an_unknown_model_is_one_error_line_in_its_column(playground, browser_page):
    events = stream_events(playground.http("trainer"), "no-such-model")
    assert len(events) == 1 and "404" in events[0]["error"]["message"]
    assert "does not exist" in events[0]["error"]["message"]
    page = browser_page
    log_in(page, playground.url, playground.keys["inference"], then="/ui/playground")
    page.evaluate("""() => {  // as if the server dropped the model after the page listed it
        const boxes = document.querySelectorAll('input[name=model]');
        boxes[0].value = 'no-such-model'; boxes[0].checked = true; boxes[1].checked = true; }""")
    page.fill("#pg-user", QUESTION)
    page.click("#pg-send")
    page.wait_for_selector(".pg-column[data-model=no-such-model][data-state=error]")
    error = page.locator(".pg-column[data-model=no-such-model] .pg-error").inner_text()
    assert "does not exist" in error and "\n" not in error.strip()
    assert not page.locator(".pg-column[data-model=no-such-model] .pg-rating").is_visible()  # nothing to rate
    page.wait_for_selector(f".pg-column[data-model={ADAPTER}][data-state=done]")  # the other column is unharmed


def test_a_viewer_gets_no_playground(playground):
    viewer = playground.http("viewer")
    serving = viewer.get("/ui/serving")
    assert serving.status_code == 200 and 'href="/ui/playground"' not in serving.text
    assert viewer.get("/ui/playground").status_code == 403
    ask = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    csrf = {"X-CSRF-Token": csrf_of(viewer, "/ui/serving")}
    refused = viewer.post("/ui/api/playground/stream", json=ask, headers=csrf)
    assert refused.status_code == 403 and "generate" in refused.json()["error"]["message"]
    inference = playground.http("inference")
    assert inference.post("/ui/api/playground/stream", json=ask).status_code == 403  # no CSRF token


def test_a_bad_body_is_a_400_naming_the_field(playground):
    trainer = playground.http("trainer")
    answer = trainer.post("/ui/api/playground/stream", json={"model": BASE, "messages": []},
                          headers={"X-CSRF-Token": csrf_of(trainer)})
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("messages")
    events = stream_events(trainer, BASE, temperature=5.0)  # the server checks the ranges: its 400, one line
    message = events[0]["error"]["message"]
    assert len(events) == 1 and "400" in message and "temperature" in message


def test_without_a_server_the_page_says_how_to_get_one(served, tmp_path):
    with dashboard_for(None, served.keys, tmp_path) as dashboard:
        trainer = dashboard.http("trainer")
        page = trainer.get("/ui/playground")
        assert page.status_code == 200
        assert "start <code>tunelab serve --ui</code>, or <code>tunelab ui --server URL</code>" in page.text
        assert 'id="playground"' not in page.text
        ask = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
        answer = trainer.post("/ui/api/playground/stream", json=ask, headers={"X-CSRF-Token": csrf_of(trainer)})
        assert answer.status_code == 409 and "tunelab serve --ui" in answer.json()["error"]["message"]


def test_a_server_that_is_down_is_one_line(served, tmp_path):
    with dashboard_for(f"http://127.0.0.1:{free_port()}", served.keys, tmp_path) as dashboard:
        trainer = dashboard.http("trainer")
        page = trainer.get("/ui/playground")
        assert page.status_code == 200 and "is not reachable" in page.text
        events = stream_events(trainer, BASE)
        assert len(events) == 1 and "is not reachable" in events[0]["error"]["message"]


# -- tunelab serve --ui ----------------------------------------------------------------------------------------

def test_serve_with_ui_mounts_the_dashboard_on_the_api(model_home, monkeypatch):  # noqa: F811
    from tunelab.cli import build_parser, dashboard_pages
    from tunelab.registry.keys import create_key
    from tunelab.serve.app import ServerState, ServeSettings, build_app

    assert build_parser().parse_args(["serve", "--ui"]).ui
    monkeypatch.chdir(model_home)
    state = ServerState(ServeSettings(base=BASE, adapters=[(ADAPTER, str(model_home / "runs" / ADAPTER))]))
    app = build_app(state)
    dashboard_pages(None)(app, state)  # what tunelab serve --ui does
    assert not [path for path in app.openapi()["paths"] if path.startswith("/ui")]
    with state.registry.session() as db:
        key = create_key(db, "ui-trainer", "trainer")[1]
    with app_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/ui/login").status_code == 200
        assert client.get("/v1/models").status_code == 401  # the API still wants a key
        assert client.get("/ui/playground").status_code == 303  # and the pages a session
        assert client.post("/ui/login", data={"key": key, "next": "/ui/playground"}).status_code == 303
        page = client.get("/ui/playground")
        assert page.status_code == 200 and f'value="{ADAPTER}"' in page.text  # listed by this very server
        events = stream_events(client, ADAPTER)
        assert events[-1] == "[DONE]" and any(e.get("choices") for e in events if isinstance(e, dict))
        assert client.get("/v1/models").status_code == 401  # a dashboard session is no API key
