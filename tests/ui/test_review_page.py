"""The Review pages: a blind review judged in a real chromium (its choices resolved to the right models in the
registry), a pending pair whose HTML names no model, who may start a review and who may only read its results,
a second vote refused, and the preference pairs downloaded as JSON lines."""

from __future__ import annotations

import html
import json
import re
from urllib.parse import parse_qs, urlparse

from sqlalchemy import select

from tests.ui.browser import log_in, screenshot
from tunelab.registry.review import new_pairs, record_choice, winner_of
from tunelab.registry.schema import ApiKey, ReviewPair, ReviewPreference, Run

CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def run_ids(dashboard) -> dict[str, str]:
    with dashboard.registry.session() as db:
        return dict(db.execute(select(Run.name, Run.id)).all())


def key_id(dashboard, role: str) -> str:
    with dashboard.registry.session() as db:
        return db.scalar(select(ApiKey.id).where(ApiKey.name == f"ui-{role}"))


def identities(dashboard) -> list[str]:
    """Every string that would tell a reviewer which model wrote an answer."""
    ids = run_ids(dashboard)
    return ["baseline-lora", "wider-lora", "tiny-base", "run:", "base:", *ids.values(), *(i[:8] for i in ids.values())]


def csrf_of(client) -> str:
    return CSRF.search(client.get("/ui/review/results").text).group(1)


def start(client, first: str, second: str = "", count: int = 3) -> list[str]:
    """Start a review over HTTP; the pair ids from the URL it redirects to."""
    answer = client.post("/ui/review/start", data={"first": first, "second": second, "count": str(count),
                                                   "csrf_token": csrf_of(client)})
    assert answer.status_code == 303, answer.text
    return parse_qs(urlparse(answer.headers["location"]).query)["pairs"][0].split(",")


def vote(client, pair_ids: list[str], pair_id: str, choice: str):
    return client.post("/ui/review/choose", data={"pair_id": pair_id, "choice": choice, "pairs": ",".join(pair_ids),
                                                  "csrf_token": csrf_of(client)})


def add_votes_between_runs(dashboard, count: int = 10) -> None:
    """A reviewer who mostly prefers wider-lora's answers (it is right on more items): a second results row."""
    ids = run_ids(dashboard)
    with dashboard.registry.session() as db:
        pairs = new_pairs(db, ids["wider-lora"], ids["baseline-lora"], count=count, seed=5, reviewer="panel")
        for number, pair in enumerate(pairs):
            stored = db.get(ReviewPair, pair["pair_id"])
            wider_left = stored.left == "first"
            choice = "tie" if number == 0 else ("left" if wider_left else "right") if number < count - 1 else (
                "right" if wider_left else "left")
            record_choice(db, pair["pair_id"], choice, "panel")


def test_trainer_judges_three_pairs_in_the_browser(dashboard, browser_page):
    page = browser_page
    baseline = run_ids(dashboard)["baseline-lora"]
    log_in(page, dashboard.url, dashboard.keys["trainer"], then="/ui/review")
    page.select_option("#first", baseline)
    page.select_option("#second", "")  # its base model
    page.fill("#count", "3")
    page.click("text=Start blind review")
    page.wait_for_selector("[data-testid=answer-a]")
    assert "pair 1 of 3" in page.locator("[data-testid=review-progress]").inner_text()
    html, url = page.content(), page.url
    assert not [name for name in identities(dashboard) if name in html or name in url]
    screenshot(page, "review")

    choices = {}
    for position, button in enumerate(["A is better", "B is better", "Tie"], 1):
        assert f"pair {position} of 3" in page.locator("[data-testid=review-progress]").inner_text()
        pair_id = page.locator("input[name=pair_id]").input_value()
        choices[pair_id] = {"A is better": "left", "B is better": "right", "Tie": "tie"}[button]
        page.click(f"button.choice:has-text('{button}')")
        page.wait_for_load_state("networkidle")
    assert "3 of 3 pairs judged" in page.locator("[data-testid=review-progress]").inner_text()
    assert "baseline-lora" in page.locator("[data-testid=review-summary]").inner_text()  # revealed now

    trainer = key_id(dashboard, "trainer")
    with dashboard.registry.session() as db:
        preferences = db.scalars(select(ReviewPreference).order_by(ReviewPreference.id)).all()
        assert len(preferences) == 3
        for preference in preferences:
            pair = db.get(ReviewPair, preference.pair_id)
            assert preference.choice == choices[pair.id] and pair.reviewer == preference.reviewer == trainer
            assert preference.winner == winner_of(pair.left, choices[pair.id])
            assert {pair.first_model, pair.second_model} == {f"run:{baseline}", "base:tiny-base"}
        first_model = preferences[0].first_model  # the results' "first" model: that of the first vote
        won = [p.first_model if p.winner == "first" else p.second_model for p in preferences if p.winner != "tie"]
    expected_wins = f"{won.count(first_model)}–{len(won) - won.count(first_model)}"

    page.goto(f"{dashboard.url}/ui/review/results")
    row = page.locator("[data-testid=review-results] tbody tr")
    assert row.count() == 1
    assert row.locator("[data-testid=votes]").inner_text() == "3"
    assert row.locator("[data-testid=wins]").inner_text() == expected_wins
    assert row.locator("[data-testid=ties]").inner_text().startswith("1")
    assert "baseline-lora" in row.inner_text() and "base (tiny-base)" in row.inner_text()
    add_votes_between_runs(dashboard)
    page.reload()
    assert page.locator("[data-testid=review-results] tbody tr").count() == 2
    assert "wider-lora preferred over baseline-lora" in page.locator("[data-testid=review-results]").inner_text()
    screenshot(page, "review-results")


def test_keys_choose_and_a_reload_continues(dashboard, browser_page):
    page = browser_page
    ids = run_ids(dashboard)
    log_in(page, dashboard.url, dashboard.keys["trainer"], then="/ui/review")
    page.select_option("#first", ids["wider-lora"])
    page.select_option("#second", ids["baseline-lora"])
    page.fill("#count", "2")
    page.click("text=Start blind review")
    page.wait_for_selector("[data-testid=answer-a]")
    first_pair = page.locator("input[name=pair_id]").input_value()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('[data-testid=review-progress]').textContent.includes('pair 2')")
    page.reload()  # the registry keeps the state: the review goes on at pair 2
    assert "pair 2 of 2" in page.locator("[data-testid=review-progress]").inner_text()
    page.keyboard.press("2")
    page.wait_for_selector("[data-testid=review-summary]")
    with dashboard.registry.session() as db:
        choices = dict(db.execute(select(ReviewPreference.pair_id, ReviewPreference.choice)).all())
    assert choices[first_pair] == "right" and sorted(choices.values()) == ["right", "tie"]


def test_the_pending_pair_names_no_model(dashboard):
    trainer = dashboard.http("trainer")
    ids = run_ids(dashboard)
    for first, second in ((ids["baseline-lora"], ""), (ids["wider-lora"], ids["baseline-lora"])):
        pair_ids = start(trainer, first, second, count=4)
        answer = trainer.get("/ui/review/session", params={"pairs": ",".join(pair_ids)})
        assert answer.status_code == 200 and "pair 1 of 4" in answer.text
        leaks = [name for name in identities(dashboard) if name in answer.text or name in ",".join(pair_ids)]
        assert not leaks, f"the pending pair's page names {leaks}"
        with dashboard.registry.session() as db:
            pair = db.get(ReviewPair, pair_ids[0])
            shown_left = pair.first_answer if pair.left == "first" else pair.second_answer
        assert re.search(r'data-testid="answer-a">([^<]*)<', answer.text).group(1) == shown_left


def test_viewer_reads_results_but_cannot_review(dashboard):
    viewer = dashboard.http("viewer")
    assert viewer.get("/ui/review").status_code == 403
    refused = viewer.post("/ui/review/start", data={"first": run_ids(dashboard)["baseline-lora"], "count": "3",
                                                    "csrf_token": csrf_of(viewer)})
    assert refused.status_code == 403 and "review" in refused.text
    assert viewer.get("/ui/review/preferences.jsonl").status_code == 403
    results = viewer.get("/ui/review/results")
    assert results.status_code == 200 and "No blind reviews yet" in results.text
    assert "preferences.jsonl" not in results.text and 'href="/ui/review"' not in results.text
    with dashboard.registry.session() as db:
        assert db.scalars(select(ReviewPair)).all() == []


def test_a_second_vote_is_refused_and_the_pairs_download(dashboard):
    trainer, admin = dashboard.http("trainer"), dashboard.http("admin")
    pair_ids = start(trainer, run_ids(dashboard)["baseline-lora"], count=2)
    assert vote(trainer, pair_ids, pair_ids[0], "left").status_code == 303
    again = vote(trainer, pair_ids, pair_ids[0], "right")
    assert again.status_code == 409
    message = re.search(r'data-testid="review-error">([^<]*)<', again.text).group(1)
    assert "already decided" in message and "\n" not in message and "Traceback" not in again.text
    other = vote(admin, pair_ids, pair_ids[1], "left")  # handed to the trainer, not to the admin
    assert other.status_code == 409 and "another reviewer" in other.text
    assert vote(trainer, pair_ids, pair_ids[1], "sideways").status_code == 409
    home = trainer.get("/ui/review").text  # the undecided pair waits for the trainer on the start page
    assert re.search(r"1 pair\s+handed to you is still waiting", home) and f"pairs={pair_ids[1]}" in home
    assert vote(trainer, pair_ids, pair_ids[1], "tie").status_code == 303
    assert "still waiting" not in trainer.get("/ui/review").text
    bad_start = trainer.post("/ui/review/start", data={"first": "no-such-run", "count": "3",
                                                       "csrf_token": csrf_of(trainer)})
    assert bad_start.status_code == 400 and "no run 'no-such-run'" in html.unescape(bad_start.text)

    download = trainer.get("/ui/review/preferences.jsonl")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    rows = [json.loads(line) for line in download.text.splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {"prompt", "chosen", "rejected", "chosen_model", "rejected_model"}
    with dashboard.registry.session() as db:
        pair = db.get(ReviewPair, pair_ids[0])
        assert rows[0]["chosen"] == (pair.first_answer if pair.left == "first" else pair.second_answer)
    with_ties = trainer.get("/ui/review/preferences.jsonl", params={"ties": "true"}).text.splitlines()
    assert len(with_ties) == 2 and json.loads(with_ties[1])["tie"] is True
