"""Export: merge a LoRA run into its base, check it on golden prompts, write a plain model folder."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.cli import main
from tunelab.config import dump_config, load_config
from tunelab.inference.generate import generate
from tunelab.runs import export
from tunelab.runs.folder import RunFolder
from tunelab.train.sft import run_sft


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """A tiny LoRA run trained hard (lr 1e-2) on a bf16 base, so the adapter moves the outputs a lot."""
    root = tmp_path_factory.mktemp("export-run")
    data = root / "sentiment.jsonl"
    words = [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative")]
    data.write_text("".join(json.dumps({"text": f"the movie was {w}", "label": label}) + "\n"
                            for w, label in words * 12), encoding="utf-8")
    run_sft(load_config(None, [f"model={tiny_model_dir}", f"data.train={data}", f"output_dir={root / 'runs'}",
                               "run_name=lora", "method=lora", "train.precision=bf16", "train.max_steps=12",
                               "train.batch_size=2", "train.learning_rate=1e-2", "train.max_length=64",
                               "eval.batch_size=8", "eval.max_new_tokens=4", "eval.baseline=false"]))
    return root / "runs" / "lora"


def fake_run(folder, model_dir, method):
    """A run folder holding only what export reads first: the resolved config."""
    folder.mkdir()
    config = load_config(None, [f"model={model_dir}", f"method={method}"], require_train_data=False)
    (folder / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    return folder


@torch.no_grad()
def last_logprobs(model, tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)


def test_export_loads_without_peft_and_matches_the_adapter_model(lora_run, tiny_model_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "exported"
    assert main(["export", str(lora_run), "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and 0 < len(check["prompts"]) <= 16 and check["max_logprob_diff"] <= 1e-3

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapter_model = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    prompts = [p.text for p in export.golden_prompts(lora_run, RunFolder(lora_run).config(), tokenizer)]
    for text in prompts:
        tuned = last_logprobs(adapter_model, tokenizer, text)
        assert (last_logprobs(exported, tokenizer, text) - tuned).abs().max() < 1e-4
        with adapter_model.disable_adapter():
            assert (last_logprobs(adapter_model, tokenizer, text) - tuned).abs().max() > 0.1  # it learned
    assert generate(exported, tokenizer, prompts, 16) == generate(adapter_model, tokenizer, prompts, 16)


def test_a_merge_that_changes_outputs_is_refused(lora_run, tmp_path, monkeypatch, capsys):
    merge = export.merge_adapter

    def tampered_merge(adapter_model, dtype):
        merged = merge(adapter_model, dtype)
        with torch.no_grad():
            merged.model.layers[-1].mlp.down_proj.weight.add_(0.05)
        return merged

    monkeypatch.setattr(export, "merge_adapter", tampered_merge)
    out = tmp_path / "exported"
    assert main(["export", str(lora_run), "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: export refused:")
    assert "golden prompt" in errors[0] and "--max-diff 0.001" in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".exported*"))  # nor a half-written staging folder
    check = json.loads((lora_run / "export_check.json").read_text())
    assert not check["passed"] and check["max_logprob_diff"] > 1e-3


def test_prefix_runs_are_refused(tmp_path, tiny_model_dir, capsys):
    run = fake_run(tmp_path / "prefix-run", tiny_model_dir, "prefix")
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "method prefix cannot be merged into the base weights; serve it as an adapter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_full_runs_are_resaved_without_the_check(tmp_path, tiny_model_dir, capsys):
    run = fake_run(tmp_path / "full-run", tiny_model_dir, "full")
    shutil.copytree(tiny_model_dir, run / "model")
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--dtype", "bf16"]) == 0
    assert "check skipped" in capsys.readouterr().out
    assert json.loads((out / "export_check.json").read_text())["checked"] is False
    exported = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert exported.dtype == torch.bfloat16
    for name, value in original.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value.to(torch.bfloat16)), name


# ---- seq2seq runs (a tiny random T5)


@pytest.fixture(scope="module")
def seq2seq_lora_run(tmp_path_factory, tiny_t5_dir):
    """A LoRA adapter on every linear layer of the tiny T5, trained hard on a bf16 base."""
    from tunelab.train.seq2seq import run_seq2seq

    root = tmp_path_factory.mktemp("export-seq2seq")
    data = root / "copy.jsonl"
    words = ["great", "dull", "wonderful", "awful", "fun", "boring"]
    data.write_text("".join(json.dumps({"prompt": f"the movie was {w}", "completion": f"a {w} movie"}) + "\n"
                            for w in words * 6), encoding="utf-8")
    run_seq2seq(load_config(None, [f"model={tiny_t5_dir}", f"data.train={data}", f"output_dir={root / 'runs'}",
                                   "run_name=t5-lora", "task=seq2seq", "method=lora", "lora.r=4",
                                   "train.precision=bf16", "train.max_steps=12", "train.batch_size=4",
                                   "train.learning_rate=1e-2", "train.max_length=32", "eval.batch_size=8",
                                   "eval.max_new_tokens=6", "eval.baseline=false"]))
    return root / "runs" / "t5-lora"


@torch.no_grad()
def seq2seq_logprobs(model, tokenizer, source, target):
    """Teacher-forced log-probs at every target position: [target tokens, vocabulary]."""
    ids = tokenizer(source, return_tensors="pt")["input_ids"]
    labels = tokenizer(text_target=target, return_tensors="pt")["input_ids"]
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    return torch.log_softmax(model(input_ids=ids, decoder_input_ids=decoder_ids).logits[0].float(), dim=-1)


def test_seq2seq_export_loads_without_peft_and_matches_the_adapter_model(seq2seq_lora_run, tiny_t5_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from tunelab.inference.seq2seq import generate_targets

    out = tmp_path / "exported"
    assert main(["export", str(seq2seq_lora_run), "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and 0 < len(check["prompts"]) <= 16 and check["max_logprob_diff"] <= 1e-3

    tokenizer = AutoTokenizer.from_pretrained(out)
    exported = AutoModelForSeq2SeqLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(exported).__name__ == "T5ForConditionalGeneration"
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, dtype=torch.float32)
    adapter_model = PeftModel.from_pretrained(base, seq2seq_lora_run / "adapter").eval()
    rows = [json.loads(line) for line in (seq2seq_lora_run / "predictions.jsonl").open()]
    assert rows
    for row in rows:  # the run's test sources, teacher-forced on their references
        tuned = seq2seq_logprobs(adapter_model, tokenizer, row["input"], row["reference"])
        assert (seq2seq_logprobs(exported, tokenizer, row["input"], row["reference"]) - tuned).abs().max() < 1e-4
        with adapter_model.disable_adapter():
            untuned = seq2seq_logprobs(adapter_model, tokenizer, row["input"], row["reference"])
            assert (untuned - tuned).abs().max() > 0.1  # it learned
    sources = [row["input"] for row in rows]
    assert generate_targets(exported, tokenizer, sources, 8, 8, 32) == generate_targets(adapter_model, tokenizer,
                                                                                        sources, 8, 8, 32)


def test_full_seq2seq_runs_are_resaved_as_seq2seq_models(tmp_path, tiny_t5_dir):
    from transformers import AutoModelForSeq2SeqLM

    run = tmp_path / "t5-full"
    run.mkdir()
    config = load_config(None, [f"model={tiny_t5_dir}", "task=seq2seq", "method=full"], require_train_data=False)
    (run / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    shutil.copytree(tiny_t5_dir, run / "model")
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--dtype", "bf16"]) == 0
    exported = AutoModelForSeq2SeqLM.from_pretrained(out)
    original = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, dtype=torch.float32)
    assert exported.dtype == torch.bfloat16
    for name, value in original.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value.to(torch.bfloat16)), name
