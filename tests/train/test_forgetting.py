"""Forgetting check of continued pretraining: general-text perplexity before and after training."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.config import BUNDLED_GENERAL_TEXT, load_config
from tunelab.data.formats import read_records
from tunelab.data.templates import encode_text
from tunelab.errors import DataError
from tunelab.eval.metrics import perplexity
from tunelab.inference.scoring import heldout_nll
from tunelab.train.pretrain import run_pretrain


@pytest.fixture
def domain_text(tmp_path):
    path = tmp_path / "domain.jsonl"
    path.write_text("".join(json.dumps({"text": f"the movie was great and the acting was wonderful {i % 3}"}) + "\n"
                            for i in range(30)))
    return path


def pretrain_config(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", "task=pretrain", "method=full",
                              f"output_dir={tmp_path}", "train.max_steps=10", "train.batch_size=2",
                              "train.learning_rate=3e-2", "train.max_length=32", "train.precision=fp32",
                              "eval.batch_size=128", *extra])


def test_pretrain_measures_general_text_perplexity_before_and_after(tmp_path, tiny_model_dir, domain_text):
    metrics = run_pretrain(pretrain_config(tmp_path, tiny_model_dir, domain_text, "run_name=pt"))
    forgetting = metrics["forgetting"]
    # The base side is the untouched base model's perplexity on the bundled text, computed here afresh.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    records, _ = read_records(BUNDLED_GENERAL_TEXT)
    chunks = [c for r in records for c in encode_text(tokenizer, r.text, 32)]
    assert forgetting["base_perplexity"] == pytest.approx(perplexity(*heldout_nll(base, chunks, 32, 0)), rel=1e-4)
    # Training hard on one sentence makes general text less likely: that is the forgetting measured.
    assert forgetting["tuned_perplexity"] > forgetting["base_perplexity"]
    expected_change = 100 * (forgetting["tuned_perplexity"] / forgetting["base_perplexity"] - 1)
    assert forgetting["change_pct"] == pytest.approx(expected_change, abs=0.01)
    assert json.loads((tmp_path / "pt" / "metrics.json").read_text())["forgetting"] == forgetting
    assert "## Forgetting" in (tmp_path / "pt" / "report.md").read_text()


def test_forgetting_check_can_be_turned_off(tmp_path, tiny_model_dir, domain_text):
    metrics = run_pretrain(pretrain_config(tmp_path, tiny_model_dir, domain_text, "run_name=no-check",
                                           "eval.forgetting_text=null", "train.max_steps=2"))
    assert "forgetting" not in metrics
    assert "forgetting" not in json.loads((tmp_path / "no-check" / "metrics.json").read_text())
    assert "## Forgetting" not in (tmp_path / "no-check" / "report.md").read_text()


def test_a_forgetting_file_without_text_rows_fails_before_the_run_starts(tmp_path, tiny_model_dir, domain_text):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n")
    config = pretrain_config(tmp_path, tiny_model_dir, domain_text, "run_name=bad", f"eval.forgetting_text={chat}")
    with pytest.raises(DataError, match="chat.jsonl line 1"):
        run_pretrain(config)
    assert not (tmp_path / "bad").exists()
