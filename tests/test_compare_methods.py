"""benchmarks/compare_methods.py: one row per method, its numbers read from that method's own run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tunelab.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare_methods():
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_learning_rates_and_settings_are_the_shipped_configs(compare_methods):
    """Each row documents where its settings come from; they must still equal that shipped config."""
    sections = {"lora": ["lora"], "dora": ["lora"], "qlora": ["lora", "qlora"], "ia3": ["ia3"],
                "prefix": ["prefix"], "prompt": ["prompt"], "freeze": ["freeze"],
                "classifier": ["classification"]}
    shipped = {"lora": "sft/lora", "dora": "sft/dora", "qlora": "sft/qlora", "ia3": "sft/ia3",
               "prefix": "sft/prefix", "prompt": "sft/prompt", "freeze": "sft/freeze",
               "classifier": "classification/minilm"}
    for name, config_name in shipped.items():
        method = compare_methods.METHODS[name]
        config = load_config(ROOT / "configs" / f"{config_name}.yaml")
        ours = load_config(None, [f"data.train={ROOT / 'data/examples/movie_sentiment.jsonl'}",
                                  *method.overrides(config.model)])
        assert (ours.task, ours.method) == (config.task, config.method), name
        assert ours.train.learning_rate == config.train.learning_rate, name
        for section in sections[name]:
            assert getattr(ours, section) == getattr(config, section), (name, section)
    lora = load_config(ROOT / "configs" / "sft" / "lora.yaml")
    rslora = load_config(None, [f"data.train={ROOT / 'data/examples/movie_sentiment.jsonl'}",
                                *compare_methods.METHODS["rslora"].overrides("smollm2-135m")])
    assert (rslora.lora, rslora.train.learning_rate) == (lora.lora, lora.train.learning_rate)


def test_table_has_a_row_per_method_with_the_runs_numbers(compare_methods, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, work = tmp_path / "result.md", tmp_path / "work"
    names = ["lora", "ia3", "classifier"]
    rc = compare_methods.main(["--methods", ",".join(names), "--model", str(tiny_model_dir),
                               "--classifier-model", str(tiny_model_dir), "--train-examples", "12",
                               "--eval-examples", "6", "--out", str(out), "--work", str(work)])
    result = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert rc == 0, [r.get("error") for r in result["rows"]]
    assert [r["name"] for r in result["rows"]] == names

    text = out.read_text(encoding="utf-8")
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_rows) == 1 + len(names)  # the header, then one row per method
    for name, row, line in zip(names, result["rows"], table_rows[1:]):
        metrics = json.loads((work / "runs" / name / "metrics.json").read_text(encoding="utf-8"))
        assert line.startswith(f"| {name}")
        # the numbers are the run's own, as the table shows them
        assert row["trainable_params"] == metrics["train"]["trainable_params"] > 0
        assert row["train_s"] == metrics["train"]["seconds"]
        assert row["tokens_per_s"] == metrics["train"]["tokens_per_second"] > 0
        assert row["tuned"]["accuracy"] == metrics["tuned"]["accuracy"]
        assert row["base"]["f1"] == metrics["base"]["f1"]
        assert row["tuned"]["loss"] == metrics["tuned"]["loss"]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3].startswith(f"{metrics['train']['trainable_params']:,} (")
        assert float(cells[9]) == pytest.approx(metrics["tuned"]["accuracy"], abs=5e-5)
        assert float(cells[13]) == pytest.approx(metrics["tuned"]["loss"], abs=5e-5)
        # measured on the child process, around the training it reports
        assert row["wall_s"] > row["train_s"] > 0
        assert row["peak_rss_mb"] >= row["train_peak_rss_mb"] * 0.99 > 0
        assert row["examples"] == 12 and row["test_examples"] >= 6
    assert len({r["trainable_params"] for r in result["rows"]}) == len(names)  # each row its own method
    assert result["config"]["train_examples"] == 12 and "--methods lora,ia3,classifier" in result["command"]


def test_unknown_method_is_refused(compare_methods):
    with pytest.raises(SystemExit):
        compare_methods.parse_args(["--methods", "lora,bogus"])
