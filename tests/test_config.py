"""Typed config: overrides, unknown keys, all problems at once, and every shipped config validates."""

from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_apply_on_an_empty_config():
    config = load_config("/dev/null", ["data.train=my.jsonl", "train.max_steps=50", "method=dora", "lora.r=8"])
    assert (config.data.train, config.train.max_steps, config.method, config.lora.r) == ("my.jsonl", 50, "dora", 8)


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {batch_size: 0, epocs: 2}\nmethod: lorra\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["lora.r=-1"])
    text = str(info.value)
    for expected in ("train.batch_size", "train.epocs: unknown key", "method", "lora.r", "data.train: required"):
        assert expected in text
    assert len(info.value.problems) == 5


def test_invalid_yaml_is_one_clear_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="not key=value"):
        load_config("/dev/null", ["train.max_steps"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# tunelab "), "the first line names the command that runs the config"
    config = load_config(path)
    assert (ROOT / config.data.train).exists() or Path(config.data.train).exists()


def test_data_seed_holds_the_splits_while_the_training_seed_varies(tmp_path):
    from tunelab.data.dataset import load_splits
    from tunelab.train.setup import cap_examples

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(60)))

    def splits(*overrides):
        config = load_config(None, [f"data.train={data}", "data.max_train_examples=20", "eval.max_examples=3",
                                    *overrides])
        parts = load_splits(config.data, config.data_seed)
        return [[row.line for row in part] for part in (parts.train, parts.val, parts.test,
                                                      cap_examples(parts.test, config))]

    assert splits("train.seed=1", "data.seed=7") == splits("train.seed=2", "data.seed=7")
    assert splits("train.seed=1") != splits("train.seed=2")
    assert splits("train.seed=7") == splits("train.seed=1", "data.seed=7")
