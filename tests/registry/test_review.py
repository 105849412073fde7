"""Blind human review: pairs that hide which model answered and randomise the order, choices resolved to the
right model whatever the order, one vote per pair, win rates with a Wilson interval, the preference export
(sealed under a master key), and the migration that added the tables, applied to a registry holding data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, type_coerce

from tests.registry.fake_runs import eval_items, fake_run, review
from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.db import alembic_config, current_revision, head_revision, open_registry
from tunelab.registry.ingest import ingest_run
from tunelab.registry.models import register
from tunelab.registry.review import (export_preferences, new_pairs, preference_rows, record_choice, review_results,
                                     sides_of, winner_of)
from tunelab.registry.schema import Base, ReviewPair, ReviewPreference, Run
from tunelab.security.crypto import MAGIC
from tunelab.security.files import read_jsonl

N = 40
LABELS = {record.text: record.label for record in eval_items(N)}  # prompt -> the right answer


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    """Run folders over the same 40 items (labels as answers, so two answers differ iff one is right):
    ``good`` is right on items 0-29 and its base on none; ``poor`` is right on none (so 30 items differ from
    good, 10 are identical); ``flat`` answers like its base everywhere, on items of its own (a base model's
    answers to the same items are stored once, whichever run evaluated it)."""
    items = eval_items(N)
    flat_items = [review(i, "flat") for i in range(N)]
    return {"good": fake_run(tmp_path, "good", [i < 30 for i in range(N)], items),
            "poor": fake_run(tmp_path, "poor", [False] * N, items),
            "flat": fake_run(tmp_path, "flat", [True] * N, flat_items, base_correct=[True] * N)}


def registry_with(url: str, runs: dict[str, Path]):
    registry = open_registry(url)
    for path in runs.values():
        ingest_run(registry, path)
    return registry


def run_id(session, name: str) -> str:
    return session.scalar(select(Run.id).where(Run.name == name))


def pick(pair: dict, right_answer: bool) -> str:
    """The choice (as shown) of the right answer (the label), or of the other one."""
    label_left = pair["left"] == LABELS[pair["prompt"]]
    return "left" if label_left == right_answer else "right"


# ---- what is compared, and what a reviewer sees

def test_sides_use_shared_prompted_items_and_skip_identical_answers(registry_url, runs):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        good = run_id(session, "good")
        alone = sides_of(session, "good", None)  # a run alone: its tuned answers against its base model's
        assert (alone.first, alone.second) == (f"run:{good}", "base:tiny-base")
        assert (len(alone.items), alone.identical, alone.unprompted) == (30, 10, 0)
        assert all(item.first_answer == LABELS[item.prompt] != item.second_answer for item in alone.items)
        two = sides_of(session, good, "poor")
        assert (two.first, two.second) == (f"run:{good}", f"run:{run_id(session, 'poor')}")
        assert (len(two.items), two.identical) == (30, 10)
        register(session, "good", "support")
        assert sides_of(session, "support@1", "poor").first == "support@1"
        with pytest.raises(TunelabError, match="both sides are the same model"):
            sides_of(session, "good", "support@1")
        with pytest.raises(TunelabError, match="no items to review .* 40 with identical answers"):
            new_pairs(session, "flat")
        with pytest.raises(NotFoundError, match="no model named 'nothing'"):
            sides_of(session, "nothing@1", "good")
        with pytest.raises(TunelabError, match="no run 'ghost'"):
            sides_of(session, "ghost")


def test_pairs_hide_the_models_and_randomise_the_order(registry_url, runs):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        good = run_id(session, "good")
        pairs = new_pairs(session, "good", count=100, seed=3)
    assert len(pairs) == 30  # every item fit to judge, once
    assert all(set(pair) == {"pair_id", "prompt", "left", "right"} for pair in pairs)
    shown = json.dumps(pairs)
    assert good not in shown and "tiny-base" not in shown and "run:" not in shown
    assert len({pair["pair_id"] for pair in pairs}) == 30 and all(len(pair["pair_id"]) >= 20 for pair in pairs)
    tuned_left = [pair["left"] == LABELS[pair["prompt"]] for pair in pairs]
    assert 5 <= sum(tuned_left) <= 25  # both orders, about half each
    with registry.session() as session:  # the display order is stored, the pairs handed to nobody yet
        stored = {p.id: p for p in session.scalars(select(ReviewPair))}
        assert all(stored[pair["pair_id"]].left == ("first" if left else "second")
                   for pair, left in zip(pairs, tuned_left))
        assert {p.reviewer for p in stored.values()} == {None}
        unseeded = new_pairs(session, "good", count=5)
    assert len(unseeded) == 5


def test_a_seed_reproduces_the_draw_and_the_order(tmp_path, runs):
    def draw(name: str) -> list[tuple[str, str]]:
        registry = registry_with(f"sqlite:///{tmp_path}/{name}.db", runs)
        with registry.session() as session:
            return [(pair["prompt"], pair["left"]) for pair in new_pairs(session, "good", "poor", count=12, seed=11)]

    assert draw("one") == draw("two")


def test_decided_items_come_back_only_when_no_other_remains(registry_url, runs):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        first = new_pairs(session, "good", "poor", count=10, seed=1)
        for pair in first:
            record_choice(session, pair["pair_id"], "tie", "rev")
        second = new_pairs(session, "poor", "good", count=20, seed=2)  # the same two models, the other way round
        third = new_pairs(session, "good", "poor", count=30, seed=3)
    decided = {pair["prompt"] for pair in first}
    assert len(second) == 20 and not decided & {pair["prompt"] for pair in second}
    assert len({pair["prompt"] for pair in third}) == 30
    assert {pair["prompt"] for pair in third[20:]} == decided  # undecided ones before decided ones


# ---- choices

def test_choices_map_to_the_right_model_whatever_the_order(registry_url, runs):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        good = run_id(session, "good")
        pairs = new_pairs(session, "good", count=20, seed=5, reviewer="k1")
        choices = [pick(pair, right_answer=True) for pair in pairs]
        assert set(choices) == {"left", "right"}  # the tuned answer was shown on both sides
        for pair, choice in zip(pairs, choices):
            assert record_choice(session, pair["pair_id"], choice, "k1")["choice"] == choice
    with registry.session() as session:
        preferences = session.scalars(select(ReviewPreference)).all()
        assert {p.winner for p in preferences} == {"first"} and len(preferences) == 20
        assert all(p.chosen == LABELS[p.prompt] != p.rejected for p in preferences)
        assert all(p.reviewer == "k1" for p in preferences)
        assert all(p.decided is not None for p in session.scalars(select(ReviewPair)))
    with registry.session() as session:
        rows = preference_rows(session)
    assert {(r["chosen_model"], r["rejected_model"]) for r in rows} == {(f"run:{good}", "base:tiny-base")}
    assert [winner_of("first", c) for c in ("left", "right", "tie")] == ["first", "second", "tie"]
    assert [winner_of("second", c) for c in ("left", "right", "tie")] == ["second", "first", "tie"]


def test_a_pair_takes_one_vote_from_its_reviewer(registry_url, runs):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        mine, open_pair = new_pairs(session, "good", count=1, reviewer="k1")[0], new_pairs(session, "good", count=1)[0]
        record_choice(session, mine["pair_id"], "LEFT ", "k1")
    attempts = [(mine["pair_id"], "right", "k1", "already decided"),
                (open_pair["pair_id"], "better", "k1", "choice 'better': pick left, right or tie"),
                ("nope", "left", "k1", "no review pair 'nope'"),
                (open_pair["pair_id"], "left", " ", "give an API key id or a name")]
    for pair_id, choice, reviewer, message in attempts:
        with pytest.raises(TunelabError, match=message), registry.session() as session:
            record_choice(session, pair_id, choice, reviewer)
    with registry.session() as session:
        other = new_pairs(session, "good", count=1, reviewer="k2")[0]
    with pytest.raises(TunelabError, match="handed to another reviewer"), registry.session() as session:
        record_choice(session, other["pair_id"], "left", "k1")
    with registry.session() as session:
        assert len(session.scalars(select(ReviewPreference)).all()) == 1
        record_choice(session, open_pair["pair_id"], "tie", "anyone")  # a pair handed to nobody takes anyone's
    with pytest.raises(TunelabError, match="count must be at least 1"), registry.session() as session:
        new_pairs(session, "good", count=0)


# ---- results

def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out by hand."""
    p = successes / n
    centre = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    return centre - half, centre + half


def vote(session, pairs: list[dict], first_wins: int, second_wins: int, ties: int, first_is_right: bool) -> None:
    """Votes on ``pairs`` in turn: the first side's answer, then the second's, then ties."""
    choices = ["first"] * first_wins + ["second"] * second_wins + ["tie"] * ties
    for pair, side in zip(pairs, choices, strict=True):
        choice = "tie" if side == "tie" else pick(pair, right_answer=(side == "first") == first_is_right)
        record_choice(session, pair["pair_id"], choice, "rev")


def test_results_count_wins_and_ties_with_a_wilson_interval(registry_url, runs):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        good, poor = run_id(session, "good"), run_id(session, "poor")
        vote(session, new_pairs(session, "good", "poor", count=2, seed=1), 1, 1, 0, first_is_right=True)
        assert review_results(session)[0]["verdict"].startswith("no clear preference: good won 1 of 2")
        vote(session, new_pairs(session, "good", "poor", count=18, seed=2), 11, 3, 4, first_is_right=True)
        vote(session, new_pairs(session, "poor", "good", count=10, seed=3), 2, 6, 2, first_is_right=False)
        vote(session, new_pairs(session, "good", count=10, seed=4), 0, 10, 0, first_is_right=True)
        results = review_results(session)
    assert len(results) == 2
    runs_, base = results
    assert (runs_["first"], runs_["second"]) == (f"run:{good}", f"run:{poor}")  # the other way round folded in
    assert (runs_["n"], runs_["first_wins"], runs_["second_wins"], runs_["ties"]) == (30, 18, 6, 6)
    assert runs_["win_rate"] == pytest.approx(0.75) and runs_["tie_share"] == pytest.approx(0.2)
    assert runs_["interval"] == pytest.approx(wilson(18, 24))
    assert runs_["interval"][0] > 0.5 and runs_["verdict"].startswith("good preferred over poor")
    assert (runs_["first_label"], base["second_label"]) == ("good", "base (tiny-base)")
    assert (base["first"], base["second"], base["first_wins"], base["second_wins"]) == (f"run:{good}",
                                                                                       "base:tiny-base", 0, 10)
    assert base["interval"] == pytest.approx(wilson(0, 10), abs=1e-12)
    assert base["verdict"].startswith("base (tiny-base) preferred over good: 10 of 10")


# ---- the preference export

def test_export_writes_the_decisive_pairs_with_chosen_and_rejected(registry_url, runs, tmp_path):
    registry = registry_with(registry_url, runs)
    with registry.session() as session:
        good, poor = run_id(session, "good"), run_id(session, "poor")
        vote(session, new_pairs(session, "good", "poor", count=10, seed=1), 5, 3, 2, first_is_right=True)
        out = tmp_path / "out" / "preferences.jsonl"
        assert export_preferences(session, out) == 8
        assert len(preference_rows(session, include_ties=True)) == 10
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 and all(list(row) == ["prompt", "chosen", "rejected", "chosen_model", "rejected_model"]
                                  for row in rows)
    for row in rows:
        good_won = row["chosen"] == LABELS[row["prompt"]]
        assert row["rejected"] != row["chosen"]
        assert (row["chosen_model"], row["rejected_model"]) == ((f"run:{good}", f"run:{poor}") if good_won
                                                               else (f"run:{poor}", f"run:{good}"))
    assert sum(row["chosen_model"] == f"run:{good}" for row in rows) == 5


def test_prompts_answers_and_the_export_are_sealed_under_a_master_key(tmp_path, runs, monkeypatch):
    monkeypatch.setenv("TUNELAB_KEY", os.urandom(32).hex())
    registry = registry_with(f"sqlite:///{tmp_path}/r.db", runs)
    with registry.session() as session:
        vote(session, new_pairs(session, "good", count=4, seed=1), 3, 1, 0, first_is_right=True)
        export_preferences(session, tmp_path / "prefs.jsonl")
        for table in (ReviewPair.__table__, ReviewPreference.__table__):
            for column in ("prompt", "first_answer", "chosen"):
                if column in table.columns:
                    raw = session.scalars(select(type_coerce(table.columns[column], table.columns[column].type
                                                             .raw_type))).all()
                    assert raw and all(value.startswith("tlenc1:") for value in raw)
    assert (tmp_path / "prefs.jsonl").read_bytes().startswith(MAGIC)
    assert len(read_jsonl(tmp_path / "prefs.jsonl")) == 4
    monkeypatch.delenv("TUNELAB_KEY")  # results read no sealed column: they need no key
    with registry.session() as session:
        assert review_results(session)[0]["first_wins"] == 3


# ---- the migration

def test_the_review_migration_upgrades_a_0006_registry_and_goes_back_down(registry_url, runs):
    registry = registry_with(registry_url, runs)
    config = alembic_config()
    with registry.engine.begin() as connection:  # back to the schema before review, holding runs
        config.attributes["connection"] = connection
        command.downgrade(config, "0006")
    assert current_revision(registry.engine) == "0006"
    assert not {"review_pairs", "review_preferences"} & set(inspect(registry.engine).get_table_names())
    registry.close()
    registry = open_registry(registry_url)  # opening migrates to head
    assert current_revision(registry.engine) == head_revision()
    with registry.engine.connect() as connection:  # the migration and the models describe the same tables
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    with registry.session() as session:
        assert len(session.scalars(select(Run)).all()) == 3
        pair = new_pairs(session, "good", count=1)[0]
        record_choice(session, pair["pair_id"], "left", "rev")
    with registry.engine.begin() as connection:  # down and up again with review rows in place
        config.attributes["connection"] = connection
        command.downgrade(config, "0006")
        command.upgrade(config, "head")
    with registry.session() as session:
        assert len(session.scalars(select(Run)).all()) == 3
        assert session.scalars(select(ReviewPreference)).all() == []


def test_the_cli_prints_results_and_exports_ties_on_request(tmp_path, runs, capsys):
    from tunelab.cli import main

    registry = registry_with(None, runs)
    with registry.session() as session:
        pairs = new_pairs(session, "good", "poor", count=3, seed=1)
        for pair, choice in zip(pairs, ["left", "right", "tie"]):
            record_choice(session, pair["pair_id"], choice, "cli-test")
    assert main(["review", "results"]) == 0
    table = capsys.readouterr().out
    assert "good" in table and "poor" in table and "1-1" in table  # one win each, one tie
    out = tmp_path / "prefs.jsonl"
    assert main(["review", "export", "--out", str(out)]) == 0
    assert len(read_jsonl(out)) == 2
    assert main(["review", "export", "--out", str(out), "--include-ties"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 3 and sum(bool(row.get("tie")) for row in rows) == 1
