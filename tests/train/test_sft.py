"""End-to-end SFT on a tiny random Llama: run folder contents, learning, resume and the CLI."""

import json

import pytest
import torch

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.train.sft import run_sft

FIVE_SHAPES = {
    "prompt_completion": lambda t, l: {"prompt": t, "completion": l},
    "alpaca": lambda t, l: {"instruction": "Classify the review.", "input": t, "output": l},
    "messages": lambda t, l: {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": l}]},
    "sharegpt": lambda t, l: {"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": l}]},
    "text_label": lambda t, l: {"text": t, "label": l},
}


def write_rows(path, make_row, n=40):
    words = [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative")]
    with path.open("w") as f:
        for i in range(n):
            word, label = words[i % 4]
            f.write(json.dumps(make_row(f"the movie was {word}", label)) + "\n")
    return path


def tiny_config(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              "train.max_steps=12", "train.batch_size=2", "train.learning_rate=1e-2",
                              "train.logging_steps=2", "train.save_steps=6", "train.max_length=64",
                              "eval.batch_size=8", "eval.max_new_tokens=4", *extra])


@pytest.mark.parametrize("shape", FIVE_SHAPES)
def test_every_shape_trains_and_evaluates(tmp_path, tiny_model_dir, shape):
    data = write_rows(tmp_path / f"{shape}.jsonl", FIVE_SHAPES[shape])
    metrics = run_sft(tiny_config(tmp_path, tiny_model_dir, data, f"run_name={shape}", "method=full"))
    run_dir = tmp_path / "runs" / shape
    for name in ("config.yaml", "metrics.json", "train_log.jsonl", "report.md", "predictions.jsonl",
                 "model/config.json"):
        assert (run_dir / name).exists(), name
    assert set(metrics) >= {"base", "tuned", "train"}
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    assert "accuracy" in metrics["tuned"]  # repeated answers are scored as labels
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert len(rows) == metrics["data"]["test"] and {"base_prediction", "tuned_prediction"} <= set(rows[0])


def test_lora_changes_only_adapter_weights_and_lowers_loss(tmp_path, tiny_model_dir, sentiment_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    metrics = run_sft(tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=lora", "lora.r=8",
                                  "lora.target_modules=[q_proj,v_proj]", "train.precision=fp32"))
    # LoRA r=8 on q_proj (64->64) and v_proj (64->32) in 2 layers: 2 * 8 * ((64+64) + (64+32)).
    assert metrics["train"]["trainable_params"] == 2 * 8 * ((64 + 64) + (64 + 32))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    frozen_before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, tmp_path / "runs" / "lora" / "adapter")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: it trained
    for name, value in tuned.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name and key in frozen_before:
            assert torch.equal(value, frozen_before[key]), name
    log = [json.loads(line) for line in (tmp_path / "runs" / "lora" / "train_log.jsonl").open()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0]
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir, sentiment_file):
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=resumed", "train.max_steps=6")
    run_sft(config)
    assert (tmp_path / "runs" / "resumed" / "checkpoints" / "checkpoint-6").is_dir()
    longer = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 12})})
    metrics = run_sft(longer, resume=True)
    assert metrics["train"]["steps"] == 12
    rows = [json.loads(line) for line in (tmp_path / "runs" / "resumed" / "train_log.jsonl").open()]
    loss_steps = [row["step"] for row in rows if "loss" in row]
    assert max(loss_steps) == 12 and loss_steps.count(6) == 1  # steps 1-6 were not trained again


def test_existing_run_folder_is_not_overwritten_silently(tmp_path, tiny_model_dir, sentiment_file, capsys):
    args = ["train", "/dev/null", f"model={tiny_model_dir}", f"data.train={sentiment_file}",
            f"output_dir={tmp_path / 'runs'}", "train.max_steps=2", "train.max_length=64", "run_name=twice"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_reports_bad_config_in_one_block(capsys):
    assert main(["train", "/dev/null", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "data.train: required" in err and "Traceback" not in err


def test_eval_command_compares_run_with_base(tmp_path, tiny_model_dir, sentiment_file):
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=evaluated")
    run_sft(config)
    out = tmp_path / "eval-out"
    assert main(["eval", "--model", str(tmp_path / "runs" / "evaluated"), "--data", str(sentiment_file),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1", "ece", "perplexity"} <= set(metrics["tuned"]) and "accuracy" in metrics["base"]


@pytest.mark.parametrize("packing", [True, False])
def test_batch_size_counts_examples_packed_or_not(tmp_path, tiny_model_dir, sentiment_file, packing):
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, f"run_name=packing-{packing}", "train.max_steps=null",
                         "train.epochs=1", "train.batch_size=8", f"train.packing={packing}", "eval.baseline=false",
                         "train.micro_batch_tokens=128")
    metrics = run_sft(config)
    examples = metrics["train"]["examples"]
    assert metrics["train"]["steps"] == -(-examples // 8)  # one update per 8 examples
    log = [json.loads(line) for line in (tmp_path / "runs" / f"packing-{packing}" / "train_log.jsonl").open()]
    assert max(row.get("tokens", 0) for row in log) == metrics["train"]["tokens"]
