"""The registry as a user meets it: commands that record themselves, and runs/models/datasets/lineage."""

from __future__ import annotations

import json

import pytest

from tests.registry.fake_runs import review, write_data
from tunelab.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def as_json(capsys, *args: str):
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A prepared dataset and two recorded runs on it, a short one and a longer one, in one registry that
    the module's tests share."""
    tmp_path = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setenv("TUNELAB_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
        yield _train_two_runs(tmp_path, tiny_model_dir)


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


def _train_two_runs(tmp_path, tiny_model_dir):
    rows = [review(i, "movie") for i in range(80)]
    write_data(tmp_path / "reviews.jsonl", rows)
    assert main(["data", "prepare", "reviews.jsonl", "--out", "prepared"]) == 0
    common = [f"model={tiny_model_dir}", "data.train=prepared/train.jsonl", "data.val=prepared/val.jsonl",
              "data.test=prepared/test.jsonl", "train.batch_size=4", "train.logging_steps=2", "train.max_length=256",
              "eval.batch_size=8", "eval.max_new_tokens=4"]
    assert main(["train", "/dev/null", "run_name=short", "train.max_steps=2", *common]) == 0
    assert main(["train", "/dev/null", "run_name=long", "train.max_steps=12", "train.learning_rate=1e-2",
                 *common]) == 0
    return tmp_path


def test_training_commands_record_themselves_and_runs_commands_read_them(in_project, capsys):
    runs = as_json(capsys, "runs", "list")
    assert [r["name"] for r in runs] == ["long", "short"]
    assert all(r["status"] == "finished" and r["dataset"] == "prepared v1" for r in runs)
    datasets = as_json(capsys, "datasets", "list")
    assert [(d["dataset"], d["runs"], d["origin"]) for d in datasets] == [("prepared", 2, "prepare")]
    shown = as_json(capsys, "runs", "show", "long")
    assert shown["series"]["loss"]["last_step"] == 12 and shown["config"]["train"]["max_steps"] == 12
    assert {e["arm"] for e in shown["evaluations"]} == {"base", "tuned"}
    compared = as_json(capsys, "runs", "compare", "runs/short", "long")
    assert compared["config_diff"]["train.max_steps"] == [2, 12]
    assert "train.batch_size" not in compared["config_diff"]
    flips = compared["flips"][0]
    assert flips["shared"] == shown["evaluations"][0]["items"]
    assert flips["both_right"] + flips["both_wrong"] + len(flips["right_to_wrong"]) + len(flips["wrong_to_right"]) \
        == flips["shared"]
    code, text, _ = run_cli(capsys, "runs", "compare", "short", "long")
    assert code == 0 and "config (only what differs)" in text and f"on {flips['shared']} shared items" in text


def test_register_promote_rollback_and_lineage_from_the_command_line(in_project, capsys):
    assert as_json(capsys, "models", "register", "runs/short", "--name", "critic")["version"] == 1
    again = as_json(capsys, "models", "register", "runs/short", "--name", "critic")
    assert again["version"] == 1 and again["created"] is False
    assert as_json(capsys, "models", "register", "runs/long", "--name", "critic")["version"] == 2
    assert (in_project / "runs" / "long" / "MODEL_CARD.md").is_file()
    code, _, err = run_cli(capsys, "models", "promote", "critic", "1", "--force")
    assert code == 2 and "--reason" in err
    assert run_cli(capsys, "models", "promote", "critic", "1", "--force", "--reason", "first version")[0] == 0
    fresh = write_data(in_project / "fresh.jsonl", [review(500 + i, "fresh") for i in range(12)])
    code, out, err = run_cli(capsys, "models", "promote", "critic", "2", "--eval-set", str(fresh), "--force",
                             "--reason", "tiny models prove nothing", "--json")
    assert code == 0 and err.count("gate: scoring") == 2  # both scored now on the new file ...
    assert json.loads(out)["forced"] is True  # progress goes to stderr: stdout stays JSON
    model = as_json(capsys, "models", "show", "critic")
    assert model["aliases"] == {"production": 2}
    assert model["versions"][1]["last_gate"]["result"]["n"] == 12
    assert as_json(capsys, "models", "rollback", "critic")["to"] == 1
    code, _, err = run_cli(capsys, "models", "promote", "critic", "2", "--eval-set", str(fresh), "--force",
                           "--reason", "again")
    assert code == 0 and "gate: scoring" not in err  # ... and read back from the registry the second time
    graph = as_json(capsys, "lineage", "critic@production")
    assert [r["name"] for r in graph["runs"]] == ["long"] and graph["datasets"][0]["dataset"] == "prepared@1"
    by_data = as_json(capsys, "lineage", "dataset:prepared")
    assert sorted(m["version"] for m in by_data["models"]) == [1, 2]
    code, text, _ = run_cli(capsys, "models", "show", "critic")
    assert "@production -> v2" in text and "forced: again" in text
    card = as_json(capsys, "models", "show", "critic@2", "--card")["card"]
    assert card.startswith("---\n") and "Forced" in card


def test_eval_records_per_item_results_and_errors_are_one_line(in_project, capsys):
    fresh = write_data(in_project / "fresh.jsonl", [review(700 + i, "fresh") for i in range(6)])
    code, out, _ = run_cli(capsys, "eval", "--model", "runs/long", "--data", str(fresh))
    assert code == 0 and "registry: recorded the evaluation" in out
    shown = as_json(capsys, "runs", "show", "long")
    assert sorted(e["items"] for e in shown["evaluations"]) == sorted([6, 6, *[e["items"] for e in shown[
        "evaluations"] if e["items"] != 6]])
    assert sum(1 for e in shown["evaluations"] if e["items"] == 6) == 2  # base and tuned on the new file
    for args, message in ((("runs", "show", "nope"), "no run 'nope'"),
                          (("models", "show", "nope"), "no model named 'nope'"),
                          (("lineage", "nope@production"), "no run 'nope@production'"),
                          (("models", "promote", "nope", "1"), "no model named 'nope'")):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_sweep_trials_are_recorded_as_runs_of_their_sweep(tmp_path, tiny_model_dir, sentiment_file, capsys,
                                                         monkeypatch):
    from tests.test_sweep import write_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELAB_REGISTRY_URL", f"sqlite:///{tmp_path / 'sweeps.db'}")  # not the module's registry
    config = write_config(tmp_path, tiny_model_dir, sentiment_file, {
        "metric": "tuned.loss", "direction": "minimize", "pruning": False,
        "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}}})
    assert main(["sweep", config, "--trials", "2"]) == 0
    assert capsys.readouterr().out.count("registry: recorded run") == 2
    runs = as_json(capsys, "runs", "list")
    assert sorted(r["name"] for r in runs) == ["trial-0", "trial-1"]
    assert {r["sweep"] for r in runs} == {"sweep"} and {r["status"] for r in runs} == {"finished"}
    assert {r["path"].rsplit("/", 2)[1] for r in runs} == {"sweep"}  # runs/sweep/trial-N


def test_a_registry_that_cannot_be_opened_never_stops_training(tmp_path, tiny_model_dir, sentiment_file, capsys):
    code, out, err = run_cli(capsys, "train", "/dev/null", f"model={tiny_model_dir}", f"data.train={sentiment_file}",
                             f"output_dir={tmp_path / 'runs'}", "train.max_steps=2", "train.batch_size=4",
                             "train.max_length=64", "eval.batch_size=8",
                             "--registry", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 0 and (tmp_path / "runs" / "run" / "metrics.json").is_file()
    assert "warning: registry: cannot open the registry" in err and "the run itself is not affected" in err
