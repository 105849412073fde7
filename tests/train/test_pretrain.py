"""Continued pretraining on raw text: every token trained, held-out perplexity drops."""

import json

import pytest

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.train.pretrain import run_pretrain

SENTENCES = ["the movie was great and the acting was wonderful", "a dull, tedious film with a terrible script",
             "Hello! How are you today? I am fine, thank you."]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(SENTENCES[(i + k) % 3] for k in range(3))}) + "\n"
                            for i in range(30)))
    return path


def test_pretrain_lowers_heldout_perplexity(tmp_path, tiny_model_dir, text_file):
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train={text_file}", "task=pretrain",
                                f"output_dir={tmp_path}", "run_name=pt", "method=full", "train.max_steps=15",
                                "train.batch_size=2", "train.learning_rate=3e-3", "train.max_length=32"])
    metrics = run_pretrain(config)
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert metrics["train"]["chunks"] > len(SENTENCES)  # documents longer than max_length were chunked
    assert (tmp_path / "pt" / "report.md").exists()
    log = [json.loads(line) for line in (tmp_path / "pt" / "train_log.jsonl").open()]
    assert [row["step"] for row in log if "val_loss" in row] == [2, 4, 6, 8, 10, 12, 14, 15]  # by default


def test_sft_on_raw_text_points_to_pretrain(tmp_path, tiny_model_dir, text_file, capsys):
    code = main(["train", "/dev/null", f"model={tiny_model_dir}", f"data.train={text_file}", f"output_dir={tmp_path}"])
    assert code == 2
    assert "use task: pretrain" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-created
