"""The Models pages: versions and aliases, the lineage graph, the safe model card, and Promote through the gate.

The fixture's two runs answer the same 24 held-out items: baseline-lora (v1) right on 14, wider-lora (v2) on 18,
with 8 items only v2 gets right and 4 only v1 does. With v1 in production, v2 is not shown *better*
(McNemar p = 0.39, interval -0.109 to +0.411) but is shown at most 0.15 worse (non-inferior, margin 0.15).
"""

from __future__ import annotations

import re

import pytest

from tests.ui.browser import log_in, screenshot
from tunelab.registry.gate import promote
from tunelab.registry.card_data import write_card
from tunelab.registry.models import get_version, register, resolve
from tunelab.security.audit import AuditLog


@pytest.fixture
def sentiment(dashboard):
    """Both fixture runs registered as sentiment v1 and v2 (with cards); production holds v1."""
    with dashboard.registry.session() as db:
        for key in ("baseline", "wider"):
            version, created = register(db, str(dashboard.runs[key]), "sentiment")
            assert created
            write_card(db, version)
    promote(dashboard.registry, "sentiment", 1, gate="non-inferior", margin=0.1)  # v1 against its base model
    return dashboard


def production(dashboard) -> int:
    with dashboard.registry.session() as db:
        return resolve(db, "sentiment@production")[1].version


def csrf_of(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def test_trainer_promotes_v2_in_chromium_and_sees_the_evidence(sentiment, browser_page):
    page = browser_page
    log_in(page, sentiment.url, sentiment.keys["trainer"], then="/ui/models")
    card = page.locator("section.model[data-model=sentiment]")
    assert card.locator("tbody tr").count() == 2
    assert "@production → v1" in card.inner_text()
    assert "baseline-lora" in card.inner_text() and "0.75" in card.inner_text()  # v2's tuned accuracy
    screenshot(page, "models")

    card.locator("a.button").click()
    page.wait_for_load_state("networkidle")
    form = page.locator("[data-testid=promote-v2]")
    form.locator("summary").click()
    form.locator("select[name=gate]").select_option("non-inferior")
    form.locator("input[name=margin]").fill("0.15")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    result = page.locator("[data-testid=gate-result]")
    text = result.inner_text()
    assert "PASSED" in text and "now points at v2 (was v1)" in text
    evidence = page.locator("[data-testid=gate-evidence]").inner_text()
    assert "24" in evidence and "exact McNemar" in evidence and "0.75" in evidence and "0.5833" in evidence
    assert re.search(r"only v2 right\s+8", evidence) and re.search(r"only v1 right\s+4", evidence)
    assert production(sentiment) == 2
    kinds = page.eval_on_selector_all("[data-testid=lineage-svg] g.node", "nodes => nodes.map(n => n.dataset.kind)")
    assert {"dataset", "run", "version", "alias"} <= set(kinds)
    links = page.eval_on_selector_all("[data-testid=lineage-svg] g.node a",
                                      "links => links.map(a => a.getAttribute('href'))")
    assert {link.split("/")[2] for link in links if link.startswith("/ui/")} == {"datasets", "runs", "models"}
    assert page.locator("[data-testid=lineage-svg] g.node-alias").text_content().strip().startswith("@production")
    assert "Passed" in page.locator("[data-testid=model-card]").inner_text()  # the card was refreshed
    screenshot(page, "model-detail")
    entry = AuditLog().entries()[-1]
    assert entry["action"] == "models.promote" and entry["actor"].startswith("key:")
    assert entry["objects"]["outcome"] == "promoted" and entry["objects"]["version"] == 2


def test_a_refused_promotion_shows_why_and_leaves_the_alias(sentiment):
    trainer = sentiment.http("trainer")
    token = csrf_of(trainer.get("/ui/models/sentiment").text)
    answer = trainer.post("/ui/models/sentiment/promote", data={"csrf_token": token, "version": "2",
                                                                 "alias": "production", "gate": "better"})
    assert answer.status_code == 200
    assert "REFUSED" in answer.text and "stays on v1" in answer.text and "p = 0.388" in answer.text
    assert "-0.109" in answer.text and "+0.411" in answer.text  # the interval, in the evidence
    assert production(sentiment) == 1
    assert 'class="badge action-refused"' in answer.text  # and in the alias history
    assert AuditLog().entries()[-1]["objects"]["outcome"] == "not promoted"
    with sentiment.registry.session() as db:
        v2 = get_version(db, resolve(db, "sentiment")[0], 2)
        assert v2.last_gate["passed"] is False and "Refused" in v2.card
        v2.tainted = "erasure1234"
    tainted = trainer.post("/ui/models/sentiment/promote", data={"csrf_token": token, "version": "2",
                                                                  "gate": "non-inferior", "margin": "0.15"})
    assert "REFUSED" in tainted.text and "is tainted" in tainted.text and production(sentiment) == 1
    bad = trainer.post("/ui/models/sentiment/promote", data={"csrf_token": token, "version": "2", "margin": "lots"})
    assert bad.status_code == 400 and "margin &#39;lots&#39;" in bad.text


def test_a_viewer_sees_no_promote_button_and_cannot_post(sentiment):
    viewer = sentiment.http("viewer")
    page = viewer.get("/ui/models/sentiment")
    assert page.status_code == 200 and "sentiment v2" in page.text
    assert "Promote…" not in page.text and "/promote" not in page.text
    refused = viewer.post("/ui/models/sentiment/promote", data={"csrf_token": csrf_of(page.text), "version": "2",
                                                                 "gate": "non-inferior", "margin": "0.15"})
    assert refused.status_code == 403 and "models:promote" in refused.text
    assert production(sentiment) == 1
    trainer = sentiment.http("trainer")
    no_token = trainer.post("/ui/models/sentiment/promote", data={"version": "2", "gate": "non-inferior",
                                                                   "margin": "0.15"})
    assert no_token.status_code == 403 and production(sentiment) == 1
    assert viewer.get("/ui/models/nothing").status_code == 404
    assert viewer.get("/ui/models/sentiment", params={"card": "nine"}).status_code == 200


def test_the_card_is_rendered_with_its_html_escaped(sentiment):
    with sentiment.registry.session() as db:
        version = get_version(db, resolve(db, "sentiment")[0], 2)
        version.card = ("---\nbase_model: tiny-base\n---\n# sentiment v2\n\n| item | answer |\n|---|---|\n"
                        "| 1 | <script>alert('card')</script> |\n\n<img src=x onerror=alert(1)>\n\n"
                        "[click me](javascript:alert(2)), [me too](javascript&#58;alert(3)), `a<b` and "
                        "![pixel](http://tracker.example/p.png)\n")
    page = sentiment.http("viewer").get("/ui/models/sentiment", params={"card": 2})
    body = page.text.split('data-testid="card-body">', 1)[1].split("</article>", 1)[0]
    assert "<table>" in body and "&lt;script&gt;alert(" in body  # shown as text, in the table
    assert "<script" not in body and "<img" not in body and "javascript:" not in body
    assert "tracker.example" not in body and "[image: pixel]" in body and "<code>a&lt;b</code>" in body
    assert "base_model: tiny-base" in page.text  # the front matter, as text
