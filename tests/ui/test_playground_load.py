"""Loading a model into the live server from the Playground: the critic adapter run of ``served_models.py``,
registered as model ``critic`` and promoted to ``critic@production``, is not served until a trainer loads it
from the page (``POST /ui/api/playground/load`` -> the server's ``POST /v1/admin/adapters``); then it is in
the model list, ticked, and answers like any served model.

A real server in a thread and the standalone dashboard pointing at it, on the test's registry (both open the
default one under the test's TUNELAB_HOME: the server resolves ``critic@production`` in it)."""

from __future__ import annotations

import httpx
import pytest

from tests.registry.fake_runs import eval_items, fake_run
from tests.ui.browser import log_in, screenshot
from tests.ui.served_models import (ADAPTER, ANSWERS, BASE, QUESTION, dashboard_for, model_home,  # noqa: F401
                                    models_served)
from tunelab.registry.db import open_registry
from tunelab.registry.ingest import ingest_run, run_path
from tunelab.registry.models import get_model, move_alias, register

MODEL = "critic"
LOAD = "/ui/api/playground/load"


@pytest.fixture
def promoted(model_home, tmp_path):  # noqa: F811 (model_home: the fixture imported above)
    """The critic run recorded and registered as ``critic`` v1, with ``production`` pointing at it; and a run on
    another base registered as ``sentiment``, which the form must not offer."""
    registry = open_registry()
    critic = model_home / "runs" / ADAPTER
    ingest_run(registry, critic)
    other = fake_run(tmp_path / "other-runs", "other-base-lora", [True] * 4, eval_items(4))
    ingest_run(registry, other)
    with registry.session() as db:
        version, _ = register(db, str(critic), MODEL)
        move_alias(db, get_model(db, MODEL), "production", version, "promote")
        register(db, str(other), "sentiment")
    return run_path(critic)


@pytest.fixture
def playground(promoted, model_home, tmp_path):  # noqa: F811
    with models_served(model_home) as served, dashboard_for(served.url, served.keys, tmp_path) as dashboard:
        dashboard.server = served
        yield dashboard


def csrf_of(client: httpx.Client, page: str = "/ui/playground") -> dict[str, str]:
    text = client.get(page).text
    return {"X-CSRF-Token": text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]}


def served_ids(playground) -> dict[str, str | None]:
    """The server's own list: served name -> version."""
    with playground.server.http("inference") as client:
        return {card["id"]: card.get("version") for card in client.get("/v1/models").json()["data"]}


def test_a_trainer_loads_the_promoted_version_and_it_answers(playground, browser_page):
    assert MODEL not in served_ids(playground)  # promoted is not served
    page = browser_page
    log_in(page, playground.url, playground.keys["trainer"], then="/ui/playground")
    assert page.locator("#pg-served").inner_text().startswith("2 models served by http://")
    page.select_option("#pg-load select[name=source]", f"{MODEL}@production")
    assert page.input_value("#pg-load input[name=name]") == MODEL  # the model's name, free on this server
    page.click("#pg-load button[type=submit]")
    page.wait_for_selector(f".pg-models input[value={MODEL}]:checked")
    message = page.locator(".pg-load-message")
    assert "alert ok" in message.get_attribute("class")
    assert message.inner_text() == f"Loaded {MODEL} ({MODEL}@1): it is ticked in the model list."
    assert page.locator("#pg-served").inner_text().startswith("3 models served by http://")
    row = page.locator(f".pg-model:has(input[value={MODEL}])")
    assert row.locator(".badge").inner_text() == "adapter" and "version critic@1" in row.get_attribute("title")
    assert served_ids(playground)[MODEL] == f"{MODEL}@1"
    # loading the same version again suggests a name that is still free
    assert page.input_value("#pg-load input[name=name]") == f"{MODEL}-v1"

    for box in page.locator("input[name=model]").all():
        box.set_checked(box.get_attribute("value") in (BASE, MODEL))
    page.fill("#pg-user", QUESTION)
    page.fill("input[name=temperature]", "0")
    page.click("#pg-send")
    page.wait_for_function("document.querySelectorAll('.pg-column[data-state=done]').length === 2")
    columns = page.locator(".pg-column")
    assert [columns.nth(i).get_attribute("data-model") for i in range(2)] == [BASE, MODEL]
    assert columns.nth(0).locator(".pg-text").inner_text() == ANSWERS[QUESTION][0]
    assert columns.nth(1).locator(".pg-text").inner_text() == ANSWERS[QUESTION][1]  # the critic, as registered
    screenshot(page, "playground-load")


def test_the_form_offers_versions_aliases_and_runs_on_the_served_base(playground, promoted):
    trainer = playground.http("trainer")
    text = trainer.get("/ui/playground").text
    assert 'id="pg-load"' in text
    assert text.index(f'value="{MODEL}@production"') < text.index(f'value="{MODEL}@1"')  # aliases first
    assert f'value="{promoted}"' in text  # the finished run itself
    assert "sentiment@" not in text  # trained on another base: the server would refuse it
    assert text.count("<option ") == 3

    answer = trainer.post(LOAD, json={"name": "critic-run", "source": promoted}, headers=csrf_of(trainer))
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["loaded"]["id"] == "critic-run" and reply["loaded"]["version"] == ADAPTER
    assert [m["id"] for m in reply["models"]] == [BASE, ADAPTER, "critic-run"] and reply["problem"] is None
    assert served_ids(playground)["critic-run"] == ADAPTER

    again = trainer.post(LOAD, json={"name": "critic-run", "source": f"{MODEL}@1"}, headers=csrf_of(trainer))
    assert again.status_code == 409 and "already served" in again.json()["error"]["message"]
    bad_name = trainer.post(LOAD, json={"name": "", "source": f"{MODEL}@1"}, headers=csrf_of(trainer))
    assert bad_name.status_code == 400 and bad_name.json()["error"]["message"].startswith("name")


def test_an_unknown_source_is_the_servers_one_line_error(playground, browser_page):
    trainer = playground.http("trainer")
    answer = trainer.post(LOAD, json={"name": "ghost", "source": "ghost@production"}, headers=csrf_of(trainer))
    assert answer.status_code == 404
    refusal = answer.json()["error"]["message"]
    assert refusal.startswith("the server answered 404: no model named 'ghost'") and "\n" not in refusal

    page = browser_page
    log_in(page, playground.url, playground.keys["trainer"], then="/ui/playground")
    page.evaluate("""() => {  // as if someone had typed a reference the registry does not know
        const select = document.querySelector('#pg-load select');
        select.add(new Option('ghost@production', 'ghost@production'));
        select.value = 'ghost@production'; select.dispatchEvent(new Event('change')); }""")
    page.fill("#pg-load input[name=name]", "ghost")
    page.click("#pg-load button[type=submit]")
    page.wait_for_selector(".pg-load-message.error")
    shown = page.locator(".pg-load-message").inner_text()
    assert shown == refusal
    assert page.locator(".pg-load-message").bounding_box()["height"] < 40  # one line on the page too
    assert page.locator("input[name=model]").count() == 2 and "ghost" not in served_ids(playground)
    assert not page.locator("#pg-load button[type=submit]").is_disabled()  # ready for another try


def test_an_inference_key_sees_no_form_and_is_refused(playground):
    inference = playground.http("inference")
    page = inference.get("/ui/playground")
    assert page.status_code == 200 and f'value="{ADAPTER}"' in page.text  # the playground itself works
    assert 'id="pg-load"' not in page.text and f"{MODEL}@production" not in page.text
    refused = inference.post(LOAD, json={"name": MODEL, "source": f"{MODEL}@production"}, headers=csrf_of(inference))
    assert refused.status_code == 403 and "adapters:write" in refused.json()["error"]["message"]
    viewer = playground.http("viewer")
    refused = viewer.post(LOAD, json={"name": MODEL, "source": f"{MODEL}@production"},
                          headers=csrf_of(viewer, "/ui/serving"))
    assert refused.status_code == 403
    trainer = playground.http("trainer")
    assert trainer.post(LOAD, json={"name": MODEL, "source": f"{MODEL}@1"}).status_code == 403  # no CSRF token
    assert MODEL not in served_ids(playground)
