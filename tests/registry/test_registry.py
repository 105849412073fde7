"""The registry on a real SQLite file and a real local PostgreSQL: schema, runs, gate, aliases, lineage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from tests.registry.fake_runs import eval_items, fake_run, review, write_data
from tunelab.errors import TunelabError
from tunelab.registry.card_data import CARD_FILE, write_card
from tunelab.registry.cards import read_card_metadata
from tunelab.registry.compare import compare_runs
from tunelab.registry.db import alembic_config, current_revision, head_revision, open_registry
from tunelab.registry.gate import promote
from tunelab.registry.ingest import ingest_run, record_prepared
from tunelab.registry.lineage import lineage
from tunelab.registry.models import register, resolve, rollback, show_model
from tunelab.registry.queries import find_run, list_runs, run_details
from tunelab.registry.recorder import recording
from tunelab.registry.schema import AliasEvent, Base, DatasetRow, EvalItem, Evaluation, MetricPoint, Run

ROOT = Path(__file__).resolve().parents[2]


def pattern(n: int, right: int, offset: int = 0) -> list[bool]:
    """``right`` of ``n`` items right, starting at ``offset`` (wrapping)."""
    return [((i - offset) % n) < right for i in range(n)]


# ---- schema and migrations

def test_migrations_build_the_models_schema_from_empty(registry_url):
    registry = open_registry(registry_url)
    assert current_revision(registry.engine) == head_revision()
    tables = set(inspect(registry.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    with registry.engine.connect() as connection:  # the migrations and the models describe the same schema
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    config = alembic_config()  # and the way down and up again works
    with registry.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert not set(Base.metadata.tables) & set(inspect(registry.engine).get_table_names())
    registry.close()
    assert current_revision(open_registry(registry_url).engine) == head_revision()


def test_sqlite_registry_uses_wal_and_a_busy_timeout(tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    with registry.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_default_registry_is_a_file_in_tunelab_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNELAB_REGISTRY_URL", raising=False)
    registry = open_registry()
    assert registry.engine.url.database == str(Path(os.environ["TUNELAB_HOME"]) / "registry.db")
    monkeypatch.setenv("TUNELAB_REGISTRY_URL", f"sqlite:///{tmp_path}/elsewhere.db")
    assert open_registry().engine.url.database == str(tmp_path / "elsewhere.db")


def test_an_unreachable_registry_is_one_clear_error():
    with pytest.raises(TunelabError, match="cannot open the registry at postgresql"):
        open_registry("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    try:
        open_registry("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    except TunelabError as exc:
        assert "secret" not in str(exc)


# ---- runs

def test_a_run_folder_is_indexed_with_series_artifacts_data_and_per_item_results(registry_url, tmp_path):
    items = eval_items(20)
    path = fake_run(tmp_path, "first", pattern(20, 15), items, base_correct=pattern(20, 10))
    registry = open_registry(registry_url)
    run_id = ingest_run(registry, path)
    assert ingest_run(registry, path) == run_id  # ingesting again updates the same run
    with registry.session() as session:
        run = session.get(Run, run_id)
        details = run_details(session, run)
        assert details["status"] == "finished" and details["task"] == "sft"
        assert details["series"]["loss"]["points"] == 4
        assert {a["path"] for a in details["artifacts"]} >= {"config.yaml", "predictions.jsonl",
                                                              "adapter/adapter_model.safetensors"}
        assert all(len(a["sha256"]) == 64 for a in details["artifacts"])
        assert details["packages"]["tunelab"] and details["hardware"]["cores"]
        evaluations = {e["arm"]: e for e in details["evaluations"]}
        assert evaluations["tuned"]["items"] == evaluations["base"]["items"] == 20
        tuned = session.get(Evaluation, evaluations["tuned"]["id"])
        rights = session.scalars(select(EvalItem.correct).where(EvalItem.evaluation_id == tuned.id)).all()
        assert sum(rights) == 15
        manifest = session.scalars(select(DatasetRow.split)
                                   .where(DatasetRow.version_id == run.dataset_version_id)).all()
        assert manifest.count("train") == 40 and manifest.count("test") == 20
        assert len(session.scalars(select(MetricPoint)).all()) == 4 * 2  # loss and learning_rate at 4 steps


def test_runs_compare_shows_config_diff_metric_deltas_and_the_flip_table(registry_url, tmp_path):
    items = eval_items(10)
    first = fake_run(tmp_path, "first", pattern(10, 6), items)  # items 0-5 right
    second = fake_run(tmp_path, "second", pattern(10, 6, offset=2), items)  # items 2-7 right
    registry = open_registry(registry_url)
    ingest_run(registry, first)
    ingest_run(registry, second)
    with registry.session() as session:
        result = compare_runs(session, [str(first), "second"])
    assert set(result["config_diff"]) == {"run_name", "data.train", "data.test"}  # only what differs
    assert result["metrics"]["tuned.accuracy"]["deltas"] == [0.0, 0.0]
    flips = result["flips"][0]
    assert flips["shared"] == 10
    assert sorted(f["input"] for f in flips["right_to_wrong"]) == sorted(items[i].text for i in (0, 1))
    assert sorted(f["input"] for f in flips["wrong_to_right"]) == sorted(items[i].text for i in (6, 7))
    assert flips["both_right"] == 4 and flips["both_wrong"] == 2


def test_two_processes_log_at_once_and_nothing_is_lost(registry_url, tmp_path):
    steps = 80
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from tests.registry.fake_runs import eval_items, fake_run
        from tunelab.registry.db import open_registry
        from tunelab.registry.ingest import ingest_run
        name = sys.argv[1]
        path = fake_run(Path(sys.argv[2]), name, [True] * 4, eval_items(4), steps=0, status="running")
        registry = open_registry({registry_url!r})
        log = path / "train_log.jsonl"
        for step in range(1, {steps} + 1):
            with log.open("a") as f:
                f.write(json.dumps({{"step": step, "loss": 1.0 / step}}) + "\\n")
            ingest_run(registry, path, final=False)
        ingest_run(registry, path)
    """)
    open_registry(registry_url).close()  # migrated before the writers start
    writers = [subprocess.Popen([sys.executable, "-c", script, name, str(tmp_path)], cwd=ROOT)
               for name in ("left", "right")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    registry = open_registry(registry_url)
    with registry.session() as session:
        for name in ("left", "right"):
            run = find_run(session, name)
            logged = session.scalars(select(MetricPoint.step).where(MetricPoint.run_id == run.id,
                                                                    MetricPoint.name == "loss")).all()
            assert sorted(logged) == list(range(1, steps + 1))


def test_a_run_killed_with_sigkill_shows_as_failed_with_its_last_step(registry_url, tmp_path):
    script = textwrap.dedent(f"""
        import json, os, socket, sys, time
        from pathlib import Path
        from tests.registry.fake_runs import eval_items, fake_run
        from tunelab.io import atomic_write_json
        from tunelab.registry.db import open_registry
        from tunelab.registry.ingest import ingest_run
        path = fake_run(Path(sys.argv[1]), "doomed", [True] * 4, eval_items(4), steps=7, status="running")
        atomic_write_json(path / "status.json", {{"status": "running", "pid": os.getpid(),
                                                  "host": socket.gethostname(), "started": time.time()}})
        ingest_run(open_registry({registry_url!r}), path, final=False)
        print("recorded", flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "recorded"
    registry = open_registry(registry_url)
    with registry.session() as session:
        assert list_runs(session)[0]["status"] == "running"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    with registry.session() as session:
        summary = list_runs(session)[0]
    assert summary["status"] == "failed" and summary["last_step"] == 7
    assert "ended without recording an end" in summary["reason"]


def test_recording_follows_a_run_while_it_trains_and_never_records_a_refused_folder(registry_url, tmp_path):
    path = fake_run(tmp_path, "live", [True] * 4, eval_items(4), steps=0, status="running")
    old_status = (path / "status.json").stat().st_mtime
    seen_running = []
    registry = open_registry(registry_url)
    with recording(path, url=registry_url, every=0.05):
        time.sleep(0.05)
        (path / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                      "host": os.uname().nodename, "started": time.time()}))
        assert (path / "status.json").stat().st_mtime != old_status
        for step in range(1, 4):
            with (path / "train_log.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0}) + "\n")
            deadline = time.time() + 10
            while time.time() < deadline:
                with registry.session() as session:
                    runs = session.scalars(select(Run)).all()
                    points = session.scalars(select(MetricPoint.step)).all()
                if runs and step in points:
                    seen_running.append(runs[0].status)
                    break
                time.sleep(0.05)
        (path / "status.json").write_text(json.dumps({"status": "finished", "started": 1.0, "ended": 2.0}))
    assert seen_running == ["running"] * 3
    with registry.session() as session:
        assert list_runs(session)[0]["status"] == "finished"
    other = fake_run(tmp_path, "refused", [True] * 4, eval_items(4))  # an older run a new one refused to replace
    with recording(other, url=registry_url, every=0.05):
        time.sleep(0.2)
    with registry.session() as session:
        assert [r["name"] for r in list_runs(session)] == ["live"]


# ---- models, the gate, aliases

def registered(registry, root: Path, name: str, correct: list[bool], items, **kwargs) -> int:
    path = fake_run(root, name, correct, items, **kwargs)
    ingest_run(registry, path)
    with registry.session() as session:
        version, created = register(session, str(path), "support")
        assert created
        write_card(session, version)
        return version.version


def test_promotion_passes_a_better_challenger_and_refuses_a_worse_or_unproven_one(registry_url, tmp_path):
    registry = open_registry(registry_url)
    items = eval_items(120)
    v1 = registered(registry, tmp_path, "holder", pattern(120, 70), items, base_correct=pattern(120, 60))
    first = promote(registry, "support", v1)  # no holder yet: compared with the base model
    assert first["promoted"] and "compared with its base model" in first["message"]
    v2 = registered(registry, tmp_path, "better", pattern(120, 100), items)  # 30 more right, none lost
    result = promote(registry, "support", v2)
    assert result["promoted"] and result["gate"]["result"]["challenger_only"] == 30
    assert result["gate"]["result"]["holder_only"] == 0 and result["gate"]["result"]["low"] > 0
    v3 = registered(registry, tmp_path, "worse", pattern(120, 80), items)
    with pytest.raises(TunelabError) as refused:
        promote(registry, "support", v3)
    message = str(refused.value)
    assert "REFUSED" in message and "on 120 paired held-out items" in message and "p = " in message
    assert "\n" not in message
    v4 = registered(registry, tmp_path, "same", pattern(120, 101, offset=119), items)  # +1 / -0: too few to tell
    with pytest.raises(TunelabError, match="more held-out items"):
        promote(registry, "support", v4)
    ok = promote(registry, "support", v4, gate="non-inferior", margin=0.05)  # but it is not worse by 5 points
    assert ok["promoted"] and ok["gate"]["gate"] == "non-inferior"
    with registry.session() as session:
        assert resolve(session, "support@production")[1].version == v4
        info = show_model(session, "support")
        actions = [(e["action"], e["version"]) for e in info["history"]]
        assert actions == [("promote", v1), ("promote", v2), ("refused", v3), ("refused", v4), ("promote", v4)]
        assert info["versions"][v3 - 1]["last_gate"]["passed"] is False


def test_forced_promotion_keeps_its_reason_and_rollback_goes_back(registry_url, tmp_path):
    registry = open_registry(registry_url)
    items = eval_items(40)
    v1 = registered(registry, tmp_path, "one", pattern(40, 30), items, base_correct=pattern(40, 10))
    promote(registry, "support", v1)
    v2 = registered(registry, tmp_path, "two", pattern(40, 10), items)
    with pytest.raises(TunelabError, match="--reason"):
        promote(registry, "support", v2, force=True)
    forced = promote(registry, "support", v2, force=True, reason="hotfix for the demo")
    assert forced["forced"] and "REFUSED" in forced["message"]
    with registry.session() as session:
        event = session.scalars(select(AliasEvent).order_by(AliasEvent.id.desc())).first()
        assert event.forced and event.reason == "hotfix for the demo" and event.gate["passed"] is False
        came_from, went_to = rollback(session, "support")
        assert (came_from.version, went_to.version) == (v2, v1)
    with registry.session() as session:
        assert resolve(session, "support@production")[1].version == v1
        with pytest.raises(TunelabError, match="no earlier version"):  # v1 was the first to hold it
            rollback(session, "support", "production")
        with pytest.raises(TunelabError, match="no alias 'candidate'"):
            rollback(session, "support", "candidate")


def test_an_eval_set_that_overlaps_the_training_rows_is_refused_before_scoring(registry_url, tmp_path):
    registry = open_registry(registry_url)
    items = eval_items(30)
    v1 = registered(registry, tmp_path, "clean", pattern(30, 20), items, base_correct=pattern(30, 5))
    promote(registry, "support", v1)
    leaky_train = [review(1000 + i, "train") for i in range(30)] + items[:3]
    v2 = registered(registry, tmp_path, "leaky", [True] * 30, items, train_records=leaky_train)
    with pytest.raises(TunelabError, match=r"overlaps the training data .*: 3 of its 30 items are training rows"):
        promote(registry, "support", v2)
    near = [review(1000 + i, "train") for i in range(30)]
    near.append(review(5).__class__("labeled", text=items[5].text + " indeed", label=items[5].label))
    v3 = registered(registry, tmp_path, "near", [True] * 30, items, train_records=near)
    with pytest.raises(TunelabError, match=r"0 of its 30 items are training rows and 1 more near-duplicate"):
        promote(registry, "support", v3)
    with registry.session() as session:
        assert resolve(session, "support@production")[1].version == v1
        gates = [e["gate"] for e in show_model(session, "support")["history"] if e["action"] == "refused"]
        assert [len(g["leak"]["exact"]) for g in gates] == [3, 0]


def test_promote_scores_on_another_eval_set_only_when_it_has_rows(registry_url, tmp_path):
    registry = open_registry(registry_url)
    items = eval_items(20)
    v1 = registered(registry, tmp_path, "one", pattern(20, 15), items, base_correct=pattern(20, 5))
    promote(registry, "support", v1)
    v2 = registered(registry, tmp_path, "two", pattern(20, 20), items)
    empty = write_data(tmp_path / "empty.jsonl", [])
    with pytest.raises(TunelabError, match="empty"):
        promote(registry, "support", v2, eval_set=str(empty))
    with pytest.raises(TunelabError, match="already is version 1"):
        promote(registry, "support", v1)


def test_model_card_is_written_with_a_parseable_header_and_the_gate_result(registry_url, tmp_path):
    registry = open_registry(registry_url)
    items = eval_items(60)
    v1 = registered(registry, tmp_path, "carded", pattern(60, 50), items, base_correct=pattern(60, 30))
    promote(registry, "support", v1)
    with registry.session() as session:
        _, version = resolve(session, f"support@{v1}")
        path = write_card(session, version)
    text = path.read_text(encoding="utf-8")
    assert path.name == CARD_FILE and path.parent == tmp_path / "carded"
    meta = read_card_metadata(text)
    assert meta["base_model"] == "tiny-base" and meta["library_name"] == "peft"
    results = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert results["tuned accuracy"] == pytest.approx(50 / 60, abs=1e-4)
    assert results["base accuracy"] == pytest.approx(30 / 60, abs=1e-4)
    assert len(meta["datasets"]) == 2  # train and test hashes
    assert "## Promotion gate" in text and "Passed" in text
    assert "### By label" in text


# ---- lineage and datasets

def test_lineage_goes_from_rows_and_datasets_to_runs_models_and_aliases_and_back(registry_url, tmp_path):
    from tunelab.data.prepare import prepare_data

    rows = [review(i, "source") for i in range(50)]
    raw = write_data(tmp_path / "raw.jsonl", rows)
    prepare_data([str(raw)], tmp_path / "prepared", near_dup_threshold=None)
    registry = open_registry(registry_url)
    version = record_prepared(registry, tmp_path / "prepared")
    assert version.rows["train"] + version.rows["val"] + version.rows["test"] == 50
    assert record_prepared(registry, tmp_path / "prepared").id == version.id  # same content, same version
    from tunelab.data.formats import read_records

    train = read_records(tmp_path / "prepared" / "train.jsonl")[0]
    test = read_records(tmp_path / "prepared" / "test.jsonl")[0]
    v1 = registered(registry, tmp_path, "trained", [True] * len(test), test, train_records=train,
                    base_correct=[False] * len(test))
    promote(registry, "support", v1, force=True, reason="a test split this small proves nothing either way")
    with registry.session() as session:
        down = lineage(session, "prepared")  # dataset -> the run that trained on its rows -> model -> alias
        assert [r["name"] for r in down["runs"]] == ["trained"]
        assert down["models"] == [{"name": "support", "version": v1, "run_id": down["runs"][0]["id"], "run": "trained",
                                   "aliases": ["production"], "artifact": str(tmp_path / "trained" / "adapter")}]
        up = lineage(session, "support@production")  # model -> run -> dataset
        assert up["runs"][0]["name"] == "trained" and len(up["datasets"]) == 1
        line = next(r.line for r in read_records(raw)[0] if r.text == train[0].text)
        by_row = lineage(session, f"{raw}:{line}")  # one raw row -> every run trained on it
        assert [r["name"] for r in by_row["runs"]] == ["trained"]
        assert {p["dataset"].split("@")[0] for p in by_row["row"]["in"]} == {"prepared", "trained-train"}
        unseen = lineage(session, "row:0123456789abcdef")
        assert unseen["runs"] == [] and unseen["models"] == []


def test_the_gate_metric_can_be_chosen_and_scores_answers_against_the_eval_set(registry_url, tmp_path):
    registry = open_registry(registry_url)
    items = eval_items(80)
    v1 = registered(registry, tmp_path, "holder", pattern(80, 40), items, base_correct=pattern(80, 10))
    promote(registry, "support", v1)
    v2 = registered(registry, tmp_path, "challenger", pattern(80, 70), items)
    exact = promote(registry, "support", v2, metric="exact_match")["gate"]["result"]
    assert exact["method"] == "mcnemar-exact" and exact["metric"] == "exact_match"
    assert (exact["challenger_only"], exact["holder_only"]) == (30, 0)
    with registry.session() as session:
        rollback(session, "support")
    rouge = promote(registry, "support", v2, metric="rouge_l")["gate"]["result"]
    assert rouge["method"] == "paired-bootstrap" and rouge["delta"] == pytest.approx(30 / 80)
    with pytest.raises(TunelabError, match="--metric bleu"):
        promote(registry, "support", v1, metric="bleu")


def test_a_folder_the_registry_has_not_seen_is_recorded_in_full_when_named(registry_url, tmp_path):
    path = fake_run(tmp_path, "older", pattern(12, 9), eval_items(12))  # trained before the registry existed
    registry = open_registry(registry_url)
    with registry.session() as session:
        details = run_details(session, find_run(session, str(path)))
    assert details["name"] == "older" and details["series"]["loss"]["points"] == 4
    assert sorted(e["arm"] for e in details["evaluations"]) == ["base", "tuned"] and details["artifacts"]


def test_a_bad_promote_request_lists_every_problem_before_anything_is_scored(tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    with pytest.raises(TunelabError) as bad:
        promote(registry, "support", 1, alias="Prod uction", gate="better", margin=0.01)
    assert "alias 'Prod uction'" in str(bad.value)
    with pytest.raises(TunelabError) as bad:
        promote(registry, "support", 1, gate="better", margin=0.01, metric="bleu", force=True)
    message = str(bad.value)
    assert "--margin applies to --gate non-inferior" in message and "--metric bleu" in message
    assert "--force needs --reason" in message and "\n" not in message
