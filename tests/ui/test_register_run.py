"""Registering a finished run as a model version from its Run page: the same registration, model card and audit
entry as ``tunelab models register``, by the session's key; refused to a viewer, and shown as one error line (never
a 500) for a bad name, bad tags, a run that did not finish or one an erasure tainted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ui.browser import log_in, screenshot
from tunelab.registry.keys import list_keys
from tunelab.registry.models import list_models, resolve
from tunelab.registry.queries import find_run
from tunelab.registry.schema import Run
from tunelab.security.audit import AuditLog


def run_id(dashboard, run: Path) -> str:
    with dashboard.registry.session() as db:
        return find_run(db, str(run)).id


def key_id(dashboard, role: str) -> str:
    with dashboard.registry.session() as db:
        return next(k["id"] for k in list_keys(db) if k["name"] == f"ui-{role}")


def csrf_of(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def model_names(dashboard) -> list[str]:
    with dashboard.registry.session() as db:
        return [m["name"] for m in list_models(db)]


def error_lines(html: str) -> list[str]:
    return re.findall(r'data-testid="register-error">([^<]*)<', html)


@pytest.fixture
def trainer(dashboard):
    """A trainer's client and the CSRF token of its session."""
    client = dashboard.http("trainer")
    return client, csrf_of(client.get("/ui/runs").text)


def test_a_trainer_registers_the_run_in_chromium_and_lands_on_the_model(dashboard, browser_page):
    page = browser_page
    baseline = run_id(dashboard, dashboard.runs["baseline"])
    log_in(page, dashboard.url, dashboard.keys["trainer"], then=f"/ui/runs/{baseline}")
    page.click(".run-tabs a[data-tab=predictions]")
    page.click("#register-jump")  # from another tab: back to Overview, at the form
    card = page.locator("[data-testid=register-card]")
    assert card.is_visible() and "Not registered as a model version yet" in card.inner_text()
    assert page.evaluate("document.activeElement.id") == "register-name"
    form = page.locator("[data-testid=register-form]")
    form.locator("input[name=name]").fill("sentiment")
    form.locator("input[name=tags]").fill("owner=ana, reviewed")
    page.evaluate("window.scrollTo(0, 0)")  # the sticky bar at the top of the whole-page picture
    screenshot(page, "run-register")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")

    assert page.url == f"{dashboard.url}/ui/models/sentiment"
    versions = page.locator("[data-testid=versions-table] tbody tr")
    assert versions.count() == 1
    assert versions.first.get_attribute("data-version") == "1" and "baseline-lora" in versions.first.inner_text()

    with dashboard.registry.session() as db:
        _, version = resolve(db, "sentiment@1")
        assert version.run_id == baseline and version.tags == {"owner": "ana", "reviewed": None}
        assert version.card and "sentiment" in version.card
        card_file = Path(version.artifact_path).parent / "MODEL_CARD.md"
    assert card_file.is_file()
    entry = AuditLog().entries()[-1]
    assert entry["action"] == "models.register" and entry["actor"] == f"key:{key_id(dashboard, 'trainer')}"
    assert entry["objects"]["model"] == "sentiment" and entry["objects"]["version"] == 1
    assert entry["objects"]["run"] == baseline and entry["objects"]["created"] is True

    page.goto(f"{dashboard.url}/ui/runs/{baseline}")  # the run now names its version, the form folds away
    assert "model sentiment v1" in page.locator(".run-meta").inner_text()
    assert page.locator("#register-jump").count() == 0
    listed = page.locator("[data-testid=run-versions] a")
    assert listed.count() == 1 and listed.first.get_attribute("href") == "/ui/models/sentiment"
    assert "v1" in page.locator("[data-testid=run-versions]").inner_text()
    assert page.locator("details.register-form").get_attribute("open") is None
    assert page.locator("#model-names option").evaluate_all("options => options.map(o => o.value)") == ["sentiment"]


def test_registering_the_same_run_again_finds_its_version(dashboard, trainer):
    client, token = trainer
    baseline = run_id(dashboard, dashboard.runs["baseline"])
    for _ in range(2):
        answer = client.post(f"/ui/runs/{baseline}/register", data={"csrf_token": token, "name": "sentiment"})
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/models/sentiment"
    with dashboard.registry.session() as db:
        assert list_models(db)[0]["versions"] == 1
    assert [e["objects"]["created"] for e in AuditLog().entries() if e["action"] == "models.register"] == [True,
                                                                                                          False]


def test_a_viewer_sees_no_form_and_cannot_post(dashboard):
    viewer = dashboard.http("viewer")
    baseline = run_id(dashboard, dashboard.runs["baseline"])
    page = viewer.get(f"/ui/runs/{baseline}")
    assert page.status_code == 200 and "baseline-lora" in page.text
    assert "register-form" not in page.text and "/register" not in page.text
    assert "Not registered as a model version yet" in page.text
    refused = viewer.post(f"/ui/runs/{baseline}/register", data={"csrf_token": csrf_of(page.text),
                                                                 "name": "sentiment"})
    assert refused.status_code == 403 and "models:promote" in refused.text
    no_token = dashboard.http("trainer").post(f"/ui/runs/{baseline}/register", data={"name": "sentiment"})
    assert no_token.status_code == 403
    assert model_names(dashboard) == []
    assert not [e for e in AuditLog().entries() if e["action"] == "models.register"]


def test_a_bad_name_or_tag_shows_one_error_line(dashboard, trainer):
    client, token = trainer
    baseline = run_id(dashboard, dashboard.runs["baseline"])
    bad_name = client.post(f"/ui/runs/{baseline}/register",
                           data={"csrf_token": token, "name": "my model!", "tags": "owner=ana"})
    assert bad_name.status_code == 400
    assert len(error_lines(bad_name.text)) == 1 and "model name &#39;my model!&#39;" in error_lines(bad_name.text)[0]
    assert "Traceback" not in bad_name.text and 'id="loss-chart"' in bad_name.text  # the run page, re-rendered
    assert 'value="my model!"' in bad_name.text and 'value="owner=ana"' in bad_name.text  # the fields kept
    bad_tag = client.post(f"/ui/runs/{baseline}/register", data={"csrf_token": token, "name": "sentiment",
                                                                 "tags": "owner=ana, =nobody"})
    assert bad_tag.status_code == 400 and len(error_lines(bad_tag.text)) == 1
    assert "tag &#39;=nobody&#39;" in error_lines(bad_tag.text)[0]
    missing = client.post("/ui/runs/no-such-run/register", data={"csrf_token": token, "name": "sentiment"})
    assert missing.status_code == 404
    assert model_names(dashboard) == []


@pytest.mark.parametrize("change, shown", [("failed", "only a finished run can be registered"),
                                           ("tainted", "tainted: it learned from rows that erasure erasure1234")])
def test_an_unfinished_or_tainted_run_is_refused(dashboard, trainer, change, shown):
    client, token = trainer
    wider = run_id(dashboard, dashboard.runs["wider"])
    with dashboard.registry.session() as db:
        run = db.get(Run, wider)
        if change == "failed":
            run.status, run.reason = "failed", "out of memory"
        else:
            run.tainted = "erasure1234"
    page = client.get(f"/ui/runs/{wider}")
    assert page.status_code == 200 and "register-form" not in page.text
    answer = client.post(f"/ui/runs/{wider}/register", data={"csrf_token": token, "name": "sentiment"})
    assert answer.status_code == 400
    assert len(error_lines(answer.text)) == 1 and shown in error_lines(answer.text)[0]
    assert model_names(dashboard) == []
