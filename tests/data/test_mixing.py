"""data.mix: sources split on their own, training rows mixed by weight, metrics reported per source."""

import json
from collections import Counter

import pytest

from tunelab.config import load_config
from tunelab.data.dataset import load_splits
from tunelab.data.mixing import count_by_source, shares, source_of
from tunelab.errors import ConfigError, DataError
from tunelab.train.sft import run_sft


def write_source(path, topic, n, label_of=lambda i: "yes" if i % 2 else "no"):
    path.write_text("".join(json.dumps({"prompt": f"{topic} question {i}", "completion": label_of(i)}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture
def two_sources(tmp_path):
    return write_source(tmp_path / "big.jsonl", "weather", 100), write_source(tmp_path / "small.jsonl", "sport", 20)


def mixed(big, small, *extra, weights=(1, 3)):
    config = load_config(None, [f"data.mix=[{{train: {big}, weight: {weights[0]}}}, "
                                f"{{train: {small}, weight: {weights[1]}}}]", *extra])
    return load_splits(config.data, config.train.seed)


def test_shares_follow_the_weights_and_add_up():
    assert shares(96, [1, 3]) == [24, 72]
    assert shares(10, [1, 1, 1]) == [4, 3, 3]  # the rounding goes to the largest remainder, then to the first
    assert sum(shares(1001, [0.3, 2.5, 7])) == 1001


def test_training_rows_are_mixed_in_proportion_to_the_weights(two_sources):
    splits = mixed(*two_sources)
    summary = splits.summary()
    # Each source is split on its own (10% val, 10% test), then the train rows are resampled.
    assert summary["train_by_source_before_mixing"] == {"big": 80, "small": 16}
    assert summary["train_by_source"] == {"big": 24, "small": 72}  # 96 rows, weights 1:3
    assert summary["val_by_source"] == {"big": 10, "small": 2} and summary["test_by_source"] == {"big": 10, "small": 2}
    small = [r for r in splits.train if source_of(r) == "small"]
    big = [r for r in splits.train if source_of(r) == "big"]
    # Upsampled 72/16 = 4.5x: every row 4 or 5 times. Downsampled 24 of 80: no row twice.
    assert set(Counter(r.messages[0]["content"] for r in small).values()) == {4, 5}
    assert max(Counter(r.messages[0]["content"] for r in big).values()) == 1
    # Held-out rows of a source never appear in training.
    heldout = {r.messages[0]["content"] for r in splits.val + splits.test}
    assert not heldout & {r.messages[0]["content"] for r in splits.train}


def test_mixing_is_seeded_and_reproducible(two_sources):
    def order(splits):
        return [r.messages[0]["content"] for r in splits.train]

    assert order(mixed(*two_sources)) == order(mixed(*two_sources))
    assert order(mixed(*two_sources)) != order(mixed(*two_sources, "train.seed=7"))


def test_max_train_examples_caps_the_mixed_set(two_sources):
    splits = mixed(*two_sources, "data.max_train_examples=40", weights=(1, 1))
    assert count_by_source(splits.train) == {"big": 20, "small": 20}


def test_train_and_mix_are_exclusive_and_one_is_required(tmp_path):
    with pytest.raises(ConfigError, match="set data.train or data.mix, not both"):
        load_config(None, ["data.train=a.jsonl", "data.mix=[{train: b.jsonl}]"])
    with pytest.raises(ConfigError, match="data.train: required .* data.mix"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="names must differ; a is used twice"):
        load_config(None, ["data.mix=[{train: x/a.jsonl}, {train: y/a.csv}]"])
    with pytest.raises(ConfigError, match="val and test files per source"):
        load_config(None, ["data.mix=[{train: a.jsonl}]", "data.val=v.jsonl"])
    with pytest.raises(ConfigError, match="weight"):
        load_config(None, ["data.mix=[{train: a.jsonl, weight: 0}]"])


def test_sources_of_different_kinds_are_refused(tmp_path, two_sources):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"plain text {i}"}) + "\n" for i in range(20)))
    with pytest.raises(DataError, match="source text holds text records but big holds chat"):
        mixed(two_sources[0], text)


def test_sft_reports_metrics_per_source(tmp_path, tiny_model_dir, two_sources):
    big, small = two_sources
    config = load_config(None, [f"model={tiny_model_dir}", f"output_dir={tmp_path / 'runs'}", "run_name=mix",
                                f"data.mix=[{{train: {big}, name: weather}}, {{train: {small}, weight: 2}}]",
                                "train.max_steps=4", "train.batch_size=4", "train.max_length=64"])
    metrics = run_sft(config)
    for arm in ("base", "tuned"):
        by_source = metrics[arm]["by_source"]
        assert set(by_source) == {"weather", "small"}
        for name, size in (("weather", 10), ("small", 2)):
            assert {"accuracy", "f1", "ece", "loss", "perplexity"} <= set(by_source[name])
            assert sum(map(sum, by_source[name]["confusion_matrix"]["matrix"])) == size  # its own test rows
        # Per-source results add up to the overall ones: accuracy weighted by test rows, loss lies between.
        weighted = (10 * by_source["weather"]["accuracy"] + 2 * by_source["small"]["accuracy"]) / 12
        assert metrics[arm]["accuracy"] == pytest.approx(weighted)
        losses = [s["loss"] for s in by_source.values()]
        assert min(losses) <= metrics[arm]["loss"] <= max(losses)
    summary = json.loads((tmp_path / "runs" / "mix" / "data_summary.json").read_text())
    assert summary["train_by_source"] == {"weather": 32, "small": 64}
    assert summary["train_by_source_before_mixing"] == {"weather": 80, "small": 16}
    report = (tmp_path / "runs" / "mix" / "report.md").read_text()
    assert "## Evaluation by source" in report and "**weather**" in report and "**small**" in report
