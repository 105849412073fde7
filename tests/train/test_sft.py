"""End-to-end SFT on a tiny random Llama: run folder contents, learning, resume and the CLI."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.config import dump_config, load_config
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


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir, sentiment_file, capsys):
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=resumed", "train.max_steps=6")
    run_sft(config)
    assert (tmp_path / "runs" / "resumed" / "checkpoints" / "checkpoint-6").is_dir()
    longer = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 12})})
    capsys.readouterr()
    metrics = run_sft(longer, resume=True)
    assert "resuming from checkpoint-6, step 6 of 12" in capsys.readouterr().out
    assert metrics["train"]["steps"] == 12
    rows = [json.loads(line) for line in (tmp_path / "runs" / "resumed" / "train_log.jsonl").open()]
    loss_steps = [row["step"] for row in rows if "loss" in row]
    assert max(loss_steps) == 12 and loss_steps.count(6) == 1  # steps 1-6 were not trained again


# Runs the CLI in a child process whose steps after the first checkpoint take 0.2 s longer, so the test can
# kill it there. The delay changes timing only: the math of every step is the CLI's own.
SLOWED_CLI = """
import sys, time
from tunelab.cli import main
from tunelab.train import fit

def slow(self, args, state, control, **kwargs):
    if state.global_step >= int(sys.argv[1]):
        time.sleep(0.2)

fit.ReleaseMemoryCallback.on_step_end = slow
sys.exit(main(sys.argv[2:]))
"""


def test_a_run_killed_after_its_first_checkpoint_resumes_from_its_folder_alone(tmp_path, tiny_model_dir,
                                                                                sentiment_file):
    """SIGKILL a real ``tunelab train`` after its first checkpoint, then ``tunelab train --resume RUN_DIR``
    (no config, no overrides) finishes it, saying where it resumes from.

    Tolerance: the resumed run ends with the final loss (to 1e-4) and the adapter weights (to 1e-5 absolute)
    of an uninterrupted run with the same seed. Resuming restores the adapter weights, optimizer, scheduler
    and RNG states exactly, and the step order is a function of seed and epoch (train/steps.py), so the two
    runs do the same float operations in the same order; on this CPU they agree bit for bit. The margins only
    leave room for a kernel that picks another summation order after a restart (a different thread count),
    and are far below the change one optimizer step makes at this learning rate (about 1e-2).
    """
    common = ["/dev/null", f"model={tiny_model_dir}", f"data.train={sentiment_file}", f"output_dir={tmp_path / 'runs'}",
              "train.max_steps=16", "train.save_steps=4", "train.logging_steps=1", "train.batch_size=2",
              "train.learning_rate=1e-2", "train.max_length=64", "train.precision=fp32", "train.compile=false",
              "train.seed=3", "eval.max_examples=4", "eval.max_new_tokens=2", "eval.baseline=false"]
    run_dir = tmp_path / "runs" / "killed"
    child = subprocess.Popen([sys.executable, "-c", SLOWED_CLI, "4", "train", *common, "run_name=killed"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        log = run_dir / "train_log.jsonl"
        while time.monotonic() < deadline and child.poll() is None:
            sealed = (run_dir / "checkpoints" / "checkpoint-4" / "tunelab_seal.json").exists()
            if sealed and log.exists() and max(row.get("step", 0) for row in map(json.loads, log.open())) >= 6:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the run ended before the test could kill it"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert not (run_dir / "adapter").exists()
    newest = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                 if (p / "tunelab_seal.json").exists())

    resumed = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", "--resume", str(run_dir)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from checkpoint-{newest}, step {newest} of 16" in resumed.stdout
    assert main(["train", *common, "run_name=straight"]) == 0

    metrics = {name: json.loads((tmp_path / "runs" / name / "metrics.json").read_text()) for name in ("killed",
                                                                                                        "straight")}
    assert metrics["killed"]["train"]["steps"] == metrics["straight"]["train"]["steps"] == 16
    assert abs(metrics["killed"]["train"]["final_loss"] - metrics["straight"]["train"]["final_loss"]) <= 1e-4
    weights = {name: load_file(tmp_path / "runs" / name / "adapter" / "adapter_model.safetensors")
               for name in ("killed", "straight")}
    assert weights["killed"].keys() == weights["straight"].keys()
    for key, value in weights["straight"].items():
        assert torch.allclose(weights["killed"][key], value, rtol=0, atol=1e-5), key
    steps = [row["step"] for row in map(json.loads, (run_dir / "train_log.jsonl").open()) if "loss" in row]
    assert steps == list(range(1, 17))  # the steps trained twice are logged once


def test_train_reads_every_form_of_resume(tmp_path, sentiment_file, monkeypatch):
    """The old forms (CONFIG --resume, in any order) and the new one (--resume RUN_DIR, config from the folder)."""
    seen = []
    monkeypatch.setattr("tunelab.registry.recorder.recording", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr("tunelab.train.recipes.train", lambda config, resume, overwrite: seen.append((config, resume)))
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"data: {{train: {sentiment_file}}}\noutput_dir: {tmp_path / 'runs'}\nrun_name: first\n")
    run_dir = tmp_path / "moved" / "first"  # a run folder that is no longer where its config says
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(load_config(config_file, ["train.max_steps=5"])))
    forms = {
        (str(config_file), "train.max_steps=3", "--resume"): (True, "runs", 3),
        ("--resume", str(config_file), "train.max_steps=3"): (True, "runs", 3),
        (str(config_file), "--resume", "train.max_steps=3"): (True, "runs", 3),
        (str(config_file),): (False, "runs", None),
        ("--resume", str(run_dir)): (True, "moved", 5),
        ("--resume", str(run_dir), "train.max_steps=7"): (True, "moved", 7),
        (str(run_dir), "--resume"): (True, "moved", 5),
    }
    for argv, (resume, folder, max_steps) in forms.items():
        seen.clear()
        assert main(["train", *argv]) == 0, argv
        (config, resumed), = seen
        assert (resumed, config.train.max_steps) == (resume, max_steps), argv
        assert config.run_dir == tmp_path / folder / "first", argv


def test_resume_before_the_first_checkpoint_starts_from_step_0(tmp_path, tiny_model_dir, sentiment_file, capsys):
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "run_name=early", "train.max_steps=2",
                         "eval.max_examples=2", "eval.baseline=false")
    run_sft(config)
    run_dir = tmp_path / "runs" / "early"
    shutil.rmtree(run_dir / "checkpoints")  # as if killed before Trainer saved anything
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert f"no checkpoint in {run_dir / 'checkpoints'} yet: starting from step 0 of 2" in capsys.readouterr().out


def test_train_without_a_config_or_a_run_folder_says_what_it_needs(tmp_path, capsys):
    assert main(["train"]) == 2
    assert "--resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


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
