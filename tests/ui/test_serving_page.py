"""The A/B & feedback page: live traffic through a real server (an A/B test between the taught tiny base and
the critic adapter, answers rated with POST /v1/feedback), then read back by the dashboard from the registry."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.ui.browser import log_in, screenshot
from tests.ui.served_models import ADAPTER, ANSWERS, BASE, dashboard_for, model_home, models_served  # noqa: F401
from tunelab.registry.serving import ab_report
from tunelab.ui import serving
from tunelab.ui.playground import DEFAULT_SYSTEM

TEST = "movie-bot"
QUESTIONS = list(ANSWERS)


def ask(running, person: int, model: str = TEST, question: str | None = None) -> tuple[str, str]:
    """One chat request as ``person``; (response id, the model that answered)."""
    question = question or QUESTIONS[person % len(QUESTIONS)]
    answer = running.client("inference").chat.completions.create(
        model=model, user=f"person-{person}", max_tokens=48, temperature=0.0,
        messages=[{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": question}])
    return answer.id, answer.model


def rate(running, response_id: str, **judgement) -> None:
    answer = running.http("inference").post("/v1/feedback", json={"response_id": response_id, **judgement})
    assert answer.status_code == 200, answer.text


@pytest.fixture
def traffic(model_home, tmp_path):  # noqa: F811 (model_home: the fixture imported above)
    """An A/B test between the base and the critic with 24 people's requests, the base's answers mostly rated up
    and the critic's mostly down (enough for a verdict), and the dashboard reading the same registry."""
    with models_served(model_home, ab_tests=[(TEST, {BASE: 0.5, ADAPTER: 0.5})]) as running:
        with ThreadPoolExecutor(4) as pool:  # the server batches them
            answered = list(pool.map(lambda person: ask(running, person), range(24)))
        served_by = Counter(model for _, model in answered)
        for number, (response_id, model) in enumerate(answered):
            liked = (model == BASE) != (number % 6 == 5)  # one in six goes against the grain
            judgement = {"rating": "up" if liked else "down"}
            if number % 4 == 0:
                judgement["score"] = 5 if liked else 2
            if number == 1:
                judgement["comment"] = "Too grumpy for a support bot."
            rate(running, response_id, **judgement)
        with dashboard_for(running.url, running.keys, tmp_path) as dashboard:
            yield dashboard, running, served_by


def arm_requests(page, arm: str) -> int:
    return int(page.locator(f"[data-testid=ab-test][data-test={TEST}] tr[data-arm='{arm}'] .arm-requests")
               .inner_text())


def test_ab_arms_and_feedback_queue(traffic, browser_page):
    dashboard, running, served_by = traffic
    assert set(served_by) == {BASE, ADAPTER}  # 24 people land on both arms
    page = browser_page
    log_in(page, dashboard.url, dashboard.keys["viewer"], then="/ui/serving")
    assert arm_requests(page, BASE) == served_by[BASE] and arm_requests(page, ADAPTER) == served_by[ADAPTER]
    with dashboard.registry.session() as db:
        verdict = ab_report(db, TEST)["verdict"]
    assert page.locator("[data-testid=ab-verdict]").inner_text().startswith(f"Verdict: {verdict}")
    assert page.locator("[data-testid=feedback-count]").inner_text() == "24"
    rows = page.locator("[data-testid=feedback-table] tbody tr")
    assert rows.count() == serving.PAGE_SIZE  # 24 rows: the first page holds 20, newest first
    table = page.locator("[data-testid=feedback-table]").inner_text()
    assert ANSWERS[QUESTIONS[0]][1] in table or ANSWERS[QUESTIONS[0]][0] in table  # the answers, as given
    assert "What is the capital of France?" in table
    screenshot(page, "serving")
    page.click("[data-testid=older]")
    assert page.locator("[data-testid=feedback-table] tbody tr").count() == 24 - serving.PAGE_SIZE
    assert "Too grumpy for a support bot." in page.locator("[data-testid=feedback-table]").inner_text()  # the oldest
    page.click("[data-testid=only-negative]")
    negative = page.locator("[data-testid=feedback-table] tbody tr")
    assert negative.count() == sum(1 for _ in page.locator(".fb-rating.down").all()) > 0
    assert page.locator(".fb-rating.up").count() == 0


def test_user_content_is_escaped_and_roles_checked(model_home, tmp_path):  # noqa: F811
    with models_served(model_home) as running:
        response_id, _ = ask(running, 1, model=BASE, question="<b>Is this bold?</b>")
        rate(running, response_id, rating="down", comment="<script>alert('x')</script>")
        with dashboard_for(running.url, running.keys, tmp_path) as dashboard:
            page = dashboard.http("viewer").get("/ui/serving", params={"negative": "true"})
            assert page.status_code == 200
            assert "&lt;b&gt;Is this bold?&lt;/b&gt;" in page.text and "<b>Is this bold?" not in page.text
            assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text
            assert 'data-testid="no-ab"' in page.text  # no A/B test on this server: the page says how to start one
            refused = dashboard.http("inference").get("/ui/serving")
            assert refused.status_code == 403 and "monitor" in refused.text


def test_empty_registry_says_where_feedback_comes_from(model_home, tmp_path):  # noqa: F811
    with models_served(model_home) as running, dashboard_for(running.url, running.keys, tmp_path) as dashboard:
        text = dashboard.http("trainer").get("/ui/serving").text
        assert 'data-testid="no-feedback"' in text and "POST /v1/feedback" in text
        assert 'data-testid="no-ab"' in text
