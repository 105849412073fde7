"""The server's records in the registry: served responses and feedback, the user hash, A/B tests with sticky
arms and their report; and the migration that added them, applied to a registry that already holds data."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from alembic import command
from scipy import stats
from sqlalchemy import delete, inspect, select

from tests.registry.fake_runs import eval_items, fake_run
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.registry.db import alembic_config, current_revision, head_revision, open_registry
from tunelab.registry.ingest import ingest_run
from tunelab.registry.keys import create_key
from tunelab.registry.schema import AbTest, ApiKey, Feedback, Run, ServedResponse
from tunelab.registry.serving import (SALT_FILE, ab_report, active_ab_tests, end_ab_test, feedback_rows,
                                      list_ab_tests, parse_arms, pick_arm, rate_difference_interval,
                                      record_feedback, record_responses, start_ab_test, user_hash)


@pytest.fixture(autouse=True)
def no_salt_variable(monkeypatch):
    monkeypatch.delenv("TUNELAB_USER_SALT", raising=False)


def served(response_id: str, **fields) -> dict:
    """A served chat response row with plausible defaults."""
    row = {"id": response_id, "endpoint": "chat", "model": "support", "served_model": "support@1",
           "model_version": "support@1", "prompt": [{"role": "user", "content": f"question {response_id}"}],
           "response": [f"answer {response_id}"], "prompt_tokens": 12, "completion_tokens": 7, "latency_ms": 120.0,
           "finish_reasons": ["stop"]}
    return row | fields


def arm_traffic(session, test: str, arm: str, positive: int, negative: int, scores=None, latencies=None) -> None:
    """``positive + negative`` responses of ``arm``, each rated once (up/down), or scored from ``scores``."""
    n = positive + negative
    latencies = latencies or [100.0] * n
    record_responses(session, [served(f"{test}-{arm}-{i}", ab_test=test, arm=arm, served_model=arm,
                                      latency_ms=latencies[i], completion_tokens=i) for i in range(n)])
    for i in range(n):
        if scores is not None:
            record_feedback(session, f"{test}-{arm}-{i}", score=scores[i])
        else:
            record_feedback(session, f"{test}-{arm}-{i}", rating="up" if i < positive else "down")


# ---- responses and feedback

def test_responses_and_feedback_round_trip(registry_url):
    registry = open_registry(registry_url)
    subject = user_hash("alice@example.com")
    with registry.session() as session:
        record_responses(session, [served("chatcmpl-1", user_hash=subject, key_id="abc123abc123"),
                                   served("cmpl-2", endpoint="completion", prompt="Once upon a time",
                                          response=["there", "was"], finish_reasons=["length", "stop"],
                                          created=datetime(2026, 1, 2, tzinfo=timezone.utc))])
        record_responses(session, [])
    with registry.session() as session:
        first = record_feedback(session, "chatcmpl-1", rating="down", corrected="The right answer.",
                                comment="wrong city")
        assert first.user_hash == subject  # taken from the response
        record_feedback(session, "cmpl-2", score=4, user_hash="someone-else")
    with registry.session() as session:
        completion = session.get(ServedResponse, "cmpl-2")
        assert completion.prompt == "Once upon a time" and completion.response == ["there", "was"]
        assert completion.created.replace(tzinfo=timezone.utc) == datetime(2026, 1, 2, tzinfo=timezone.utc)
        assert session.get(ServedResponse, "chatcmpl-1").created is not None
        rows = feedback_rows(session)
        assert [(r["response_id"], r["rating"], r["score"], r["user_hash"]) for r in rows] == [
            ("chatcmpl-1", "down", None, subject), ("cmpl-2", None, 4, "someone-else")]
        assert rows[0]["prompt"] == [{"role": "user", "content": "question chatcmpl-1"}]
        assert rows[0]["response"] == ["answer chatcmpl-1"] and rows[0]["corrected"] == "The right answer."
        assert rows[0]["model_version"] == "support@1"
        assert feedback_rows(session, since=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
        assert len(feedback_rows(session, since=datetime.now(timezone.utc) - timedelta(minutes=5))) == 2
        json.dumps(rows)
        session.execute(delete(ServedResponse).where(ServedResponse.id == "chatcmpl-1"))  # erasing a subject
    with registry.session() as session:
        assert [f.response_id for f in session.scalars(select(Feedback))] == ["cmpl-2"]  # its feedback went too


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give a rating"),
    ({"rating": "meh"}, "rating 'meh': use up or down"),
    ({"score": 7}, "score 7: use a whole number from 1 to 5"),
    ({"score": 4.5}, "score 4.5"),
    ({"score": True}, "score True"),
    ({"rating": "sideways", "score": 0}, "rating 'sideways'.*score 0"),
])
def test_feedback_is_checked(registry_url, kwargs, message):
    registry = open_registry(registry_url)
    with registry.session() as session:
        record_responses(session, [served("r1")])
    with registry.session() as session, pytest.raises(TunelabError, match=message):
        record_feedback(session, "r1", **kwargs)
    with registry.session() as session, pytest.raises(TunelabError, match="no response 'nope'"):
        record_feedback(session, "nope", rating="up")
    with registry.session() as session:
        assert record_feedback(session, "r1", rating="up", score=5).id is not None


def test_bad_response_rows_are_refused_with_every_problem(registry_url):
    registry = open_registry(registry_url)
    with registry.session() as session, pytest.raises(TunelabError) as error:
        record_responses(session, [served("a", colour="red"), {"id": "b", "endpoint": "embeddings"}])
    message = str(error.value)
    assert "row 0: unknown column(s) colour" in message and "row 1: missing model" in message
    assert "endpoint 'embeddings'" in message


# ---- who asked

def test_user_hash_is_stable_salted_and_its_salt_file_private(monkeypatch):
    first = user_hash("alice")
    salt_path = os.path.join(os.environ["TUNELAB_HOME"], SALT_FILE)
    assert stat.S_IMODE(os.stat(salt_path).st_mode) == 0o600
    salt = open(salt_path, "rb").read().strip()
    assert first == hmac.new(salt, b"alice", hashlib.sha256).hexdigest() == user_hash("alice")
    assert user_hash("bob") != first and len(first) == 64
    monkeypatch.setenv("TUNELAB_USER_SALT", "a team salt")
    assert user_hash("alice") not in (first, hashlib.sha256(b"alice").hexdigest())
    monkeypatch.delenv("TUNELAB_USER_SALT")
    os.chmod(salt_path, 0o644)
    with pytest.raises(TunelabError, match="chmod 600"):
        user_hash("alice")
    with pytest.raises(TunelabError, match="empty user"):
        user_hash(" ")


# ---- A/B tests

def test_arms_are_sticky_and_shared_by_weight():
    arms = {"small": 0.2, "medium": 0.3, "large": 0.5}
    subjects = [f"user-{i}" for i in range(20_000)]
    picked = [pick_arm(arms, "t", s) for s in subjects]
    assert picked == [pick_arm(dict(reversed(arms.items())), "t", s) for s in subjects]  # order-free
    counts = {arm: picked.count(arm) for arm in arms}
    for arm, weight in arms.items():  # within 4 binomial standard deviations of its weight
        assert abs(counts[arm] / len(subjects) - weight) < 4 * np.sqrt(weight * (1 - weight) / len(subjects))
    assert stats.chisquare(list(counts.values()), [w * len(subjects) for w in arms.values()]).pvalue > 0.001
    other_test = [pick_arm(arms, "another test", s) for s in subjects]
    assert 0.3 < np.mean([a != b for a, b in zip(picked, other_test)]) < 0.9  # each test splits anew
    assert pick_arm({"only": 1.0}, "t", "x") == "only"


def test_arms_parse_from_text():
    assert parse_arms("a:0.7, b:0.3") == {"a": 0.7, "b": 0.3}
    assert parse_arms("support@1,support@2") == {"support@1": 1.0, "support@2": 1.0}
    assert parse_arms("run:abc:1,run:def:3") == {"run:abc": 1.0, "run:def": 3.0}
    with pytest.raises(TunelabError) as error:
        parse_arms("a:x,:3,b:0,a:1")
    message = str(error.value)
    assert all(part in message for part in ("'a:x': weight 'x' is not a number", "':3' has no model name",
                                            "'b:0': weight must be above 0", "'a' is given twice"))
    with pytest.raises(TunelabError, match="every arm or to none"):
        parse_arms("a:2,b")


def test_ab_tests_start_end_and_restart(registry_url):
    registry = open_registry(registry_url)
    with registry.session() as session:
        test = start_ab_test(session, "tone", {"b": 3, "a": 1}, created_by="abc123abc123")
        assert test.arms == {"a": 0.25, "b": 0.75}
    with registry.session() as session:
        assert active_ab_tests(session) == {"tone": {"a": 0.25, "b": 0.75}}
        with pytest.raises(TunelabError, match="'tone' is already running"):
            start_ab_test(session, "tone", {"a": 1, "c": 1})
    for name, arms, message in [("", {"a": 1, "b": 1}, "needs a name"), ("x", {"a": 1}, "at least 2 arms"),
                                ("x", {"a": 1, "b": 0}, "'b': weight 0 must be a number above 0")]:
        with registry.session() as session, pytest.raises(TunelabError, match=message):
            start_ab_test(session, name, arms)
    with registry.session() as session:
        arm_traffic(session, "tone", "a", 3, 1)
        end_ab_test(session, "tone")
        assert active_ab_tests(session) == {}
        with pytest.raises(TunelabError, match="no A/B test 'nope'; known: tone"):
            end_ab_test(session, "nope")
    with registry.session() as session:
        assert list_ab_tests(session)[0]["requests"] == 4
        start_ab_test(session, "tone", {"a": 1, "c": 1})  # an ended test's name starts a new one
    with registry.session() as session:
        assert active_ab_tests(session) == {"tone": {"a": 0.5, "c": 0.5}}
        report = ab_report(session, "tone")
        assert [a["requests"] for a in report["arms"].values()] == [0, 0]  # the old traffic is not counted
        assert len(session.scalars(select(AbTest)).all()) == 1


def test_ab_report_finds_the_better_arm(registry_url):
    registry = open_registry(registry_url)
    with registry.session() as session:
        start_ab_test(session, "greeting", {"A": 1, "B": 1})
        arm_traffic(session, "greeting", "A", 40, 10, latencies=[float(i) for i in range(1, 51)])
        arm_traffic(session, "greeting", "B", 10, 40)
        record_responses(session, [served("unrated", ab_test="greeting", arm="B")])
        record_feedback(session, "greeting-A-0", rating="down")  # a changed mind: the latest feedback counts
        record_feedback(session, "greeting-A-0", rating="up")
    with registry.session() as session:
        report = ab_report(session, "greeting")
    a, b = report["arms"]["A"], report["arms"]["B"]
    assert (a["requests"], a["rated"], a["positive"], a["feedback"]) == (50, 50, 40, 52)
    assert (b["requests"], b["rated"], b["positive"], b["feedback"]) == (51, 50, 10, 50)
    assert a["positive_rate"] == 0.8 and b["positive_rate"] == 0.2 and b["feedback_rate"] == 50 / 51
    assert a["mean_latency_ms"] == 25.5 and a["p50_latency_ms"] == 25.5
    assert a["p95_latency_ms"] == pytest.approx(np.percentile(range(1, 51), 95))
    assert a["completion_tokens"] == sum(range(50)) and a["mean_completion_tokens"] == 24.5
    positive = report["tests"]["positive"]
    assert positive["method"] == "fisher-exact"
    assert positive["p_value"] == pytest.approx(stats.fisher_exact([[40, 10], [10, 40]]).pvalue) and \
        positive["p_value"] < 0.001
    assert report["tests"]["score"] is None  # no scores given
    difference = report["difference"]
    assert difference["of"] == "A - B" and difference["positive_rate"] == pytest.approx(0.6)
    assert 0.4 < difference["interval"][0] < 0.6 < difference["interval"][1] < 0.8
    assert report["verdict"].startswith("A is better (p=")
    json.dumps(report)


def test_ab_report_with_equal_arms_sees_no_difference_and_tests_scores(registry_url):
    scores = [5, 4, 3, 2, 1] * 6
    registry = open_registry(registry_url)
    with registry.session() as session:
        start_ab_test(session, "same", {"A": 1, "B": 1})
        arm_traffic(session, "same", "A", 0, 30, scores=scores)
        arm_traffic(session, "same", "B", 0, 30, scores=scores[::-1])
        report = ab_report(session, "same")
    assert report["arms"]["A"]["positive_rate"] == report["arms"]["B"]["positive_rate"] == 0.4
    assert report["arms"]["A"]["mean_score"] == 3.0 and report["arms"]["A"]["scored"] == 30
    assert report["tests"]["positive"]["p_value"] == pytest.approx(1.0)
    assert report["tests"]["score"] == {"method": "welch-t", "p_value": pytest.approx(1.0)}
    assert report["verdict"].startswith("no significant difference")


def test_ab_report_waits_for_enough_feedback(registry_url):
    registry = open_registry(registry_url)
    with registry.session() as session:
        start_ab_test(session, "early", {"A": 1, "B": 1})
        arm_traffic(session, "early", "A", 9, 0)
        arm_traffic(session, "early", "B", 0, 12)
        report = ab_report(session, "early")
        assert report["verdict"].startswith("not enough feedback yet") and "A has 9" in report["verdict"]
        with pytest.raises(TunelabError, match="no A/B test 'late'; known: early"):
            ab_report(session, "late")


def test_ab_report_uses_chi_square_for_more_arms(registry_url):
    registry = open_registry(registry_url)
    with registry.session() as session:
        start_ab_test(session, "three", parse_arms("A,B,C"))
        for arm, positive in (("A", 40), ("B", 25), ("C", 10)):
            arm_traffic(session, "three", arm, positive, 50 - positive)
        report = ab_report(session, "three")
    expected = stats.chi2_contingency([[40, 10], [25, 25], [10, 40]]).pvalue
    assert report["tests"]["positive"] == {"method": "chi-square", "p_value": pytest.approx(expected)}
    assert expected < 0.001 and report["difference"] is None and report["tests"]["score"] is None
    assert report["verdict"].startswith("the arms differ") and "A has the highest" in report["verdict"]


def test_rate_difference_interval_matches_newcombe():
    """Newcombe (1998), Table II, method 10."""
    for (a, n, b, m), (low, high) in [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
                                      ((5, 56, 0, 29), (-0.0381, 0.1926))]:
        assert rate_difference_interval(a, n, b, m) == pytest.approx((low, high), abs=1e-4)


def test_ab_commands(registry_url, capsys):
    registry = open_registry(registry_url)
    with registry.session() as session:
        start_ab_test(session, "greeting", {"A": 1, "B": 1})
        arm_traffic(session, "greeting", "A", 40, 10)
        arm_traffic(session, "greeting", "B", 10, 40)
    assert main(["ab", "show", "greeting", "--json", "--registry", registry_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arms"]["A"]["positive"] == 40 and shown["verdict"].startswith("A is better")
    assert main(["ab", "show", "greeting", "--registry", registry_url]) == 0
    printed = capsys.readouterr().out
    assert "fisher-exact" in printed and "verdict: A is better" in printed and "80% of 50" in printed
    assert main(["ab", "list", "--registry", registry_url]) == 0
    assert "greeting" in capsys.readouterr().out
    assert main(["ab", "list", "--json", "--registry", registry_url]) == 0
    assert json.loads(capsys.readouterr().out)[0]["requests"] == 100
    assert main(["ab", "show", "other", "--registry", registry_url]) == 2
    assert "no A/B test 'other'; known: greeting" in capsys.readouterr().err


# ---- the migration

def test_the_serving_migration_upgrades_a_registry_that_already_holds_runs_and_keys(registry_url, tmp_path):
    registry = open_registry(registry_url)
    run_id = ingest_run(registry, fake_run(tmp_path, "kept", [True] * 3, eval_items(3)))
    with registry.session() as session:
        create_key(session, "app", "inference")
    config = alembic_config()
    with registry.engine.begin() as connection:  # back to the schema before serving, holding runs and keys
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert current_revision(registry.engine) == "0002"
    assert not {"served_responses", "feedback", "ab_tests"} & set(inspect(registry.engine).get_table_names())
    registry.close()
    registry = open_registry(registry_url)  # opening migrates to head
    assert current_revision(registry.engine) == head_revision()
    with registry.session() as session:
        assert session.get(Run, run_id).name == "kept"
        assert [k.name for k in session.scalars(select(ApiKey))] == ["app"]
        record_responses(session, [served("r1")])
        record_feedback(session, "r1", rating="up")
        start_ab_test(session, "t", {"a": 1, "b": 1})
    with registry.engine.begin() as connection:  # and down and up again with served rows in place
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
        command.upgrade(config, "head")
    with registry.session() as session:
        assert session.get(Run, run_id).name == "kept"
        assert session.scalars(select(ServedResponse)).all() == []
