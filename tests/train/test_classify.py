"""Classification heads on a tiny random BERT (encoder) and a tiny random Llama (decoder), full and LoRA,
with early stopping, data.mix and the warmup schedule."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.train.classification import ClassifierTrainer, ClassWeightedLoss, class_weights, run_classification

# model fixture, method, learning rate, where the trained weights are saved, extra overrides
# (the tiny encoder pools one [CLS] vector and needs more steps than the decoder to pick up the word;
# LoRA's high learning rate needs a warmup step or more: the default 3% of 16 steps rounds down to none)
CASES = {
    "encoder-full": ("tiny_bert_dir", "full", 3e-3, "model", ["train.max_steps=60"]),
    "encoder-lora": ("tiny_bert_dir", "lora", 1e-2, "adapter", ["train.max_steps=60", "train.warmup_ratio=0.1"]),
    "decoder-full": ("tiny_model_dir", "full", 3e-3, "model", []),
    "decoder-lora": ("tiny_model_dir", "lora", 1e-2, "adapter", ["train.warmup_ratio=0.1"]),
}


def tiny_config(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              "task=classification", "train.max_steps=16", "train.batch_size=4",
                              "train.logging_steps=1", "train.save_steps=100", "train.max_length=32",
                              "eval.batch_size=4", *extra])


def write_labeled(path, counts: dict[str, int]):
    words = {"positive": "great", "negative": "awful", "neutral": "fine"}  # one word per label: easy to learn
    rows = [{"text": f"the movie was {words[label]}", "label": label}
            for label, n in counts.items() for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", CASES)
def test_head_trains_and_is_evaluated(request, tmp_path, sentiment_file, case):
    fixture, method, learning_rate, saved, extra = CASES[case]
    model_dir = request.getfixturevalue(fixture)
    metrics = run_classification(tiny_config(tmp_path, model_dir, sentiment_file, f"run_name={case}",
                                             f"method={method}", f"train.learning_rate={learning_rate}", *extra))
    run_dir = tmp_path / "runs" / case

    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").open()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0]
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    steps = metrics["train"]["steps"]
    every = -(-steps // 10)  # train.val_loss by default: every ceil(steps / 10) steps (16 or 60: the last is one)
    assert [row["step"] for row in log if "val_loss" in row] == list(range(every, steps + 1, every))

    test_rows = metrics["data"]["test"]
    for arm in ("base", "tuned"):
        assert {"accuracy", "precision", "recall", "f1", "ece", "loss", "confusion_matrix"} <= set(metrics[arm])
        matrix = metrics[arm]["confusion_matrix"]
        assert matrix["labels"] == ["negative", "positive"]
        assert len(matrix["matrix"]) == 2 and all(len(row) == 2 for row in matrix["matrix"])
        assert sum(map(sum, matrix["matrix"])) == test_rows

    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert len(rows) == test_rows
    assert {"id", "input", "reference", "base_prediction", "tuned_prediction", "base_correct", "tuned_correct",
            "base_confidence", "tuned_confidence"} <= set(rows[0])
    assert (run_dir / "report.md").exists()

    out_dir = run_dir / saved
    labels = json.loads((out_dir / "labels.json").read_text())
    assert labels["label2id"] == {"negative": 0, "positive": 1} and labels["class_weights"] is None
    weights = load_file(out_dir / ("model.safetensors" if saved == "model" else "adapter_model.safetensors"))
    head = [k for k in weights if {"classifier", "score"} & set(k.split("."))]
    assert head, "the new classifier head is saved"
    if saved == "adapter":
        lora_b = [v for k, v in weights.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: it trained
    else:
        config = json.loads((out_dir / "config.json").read_text())
        assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_balanced_class_weights_are_inverse_frequency():
    # 6, 3 and 1 examples of three classes: n / (k * count) = 10/18, 10/9, 10/3.
    weights = class_weights([0] * 6 + [1] * 3 + [2], 3, "balanced")
    assert weights == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert class_weights([0, 1], 2, "none") is None


def test_weighted_loss_is_normalised_by_the_examples_of_the_whole_accumulated_batch(tmp_path):
    from transformers import TrainingArguments
    from transformers.modeling_outputs import SequenceClassifierOutput

    class FixedLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]))

        def forward(self, input_ids=None, **kwargs):
            return SequenceClassifierOutput(logits=self.logits)

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = ClassifierTrainer(model=FixedLogits(), args=args, loss_fn=ClassWeightedLoss([0.5, 2.0]))
    labels = torch.tensor([0, 0, 1])
    inputs = {"input_ids": torch.zeros(3, 1, dtype=torch.long), "labels": labels}
    # This micro-batch holds 3 of the 6 examples in the accumulated batch.
    loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=6)
    per_example = torch.nn.functional.cross_entropy(trainer.model.logits, labels, reduction="none")
    assert loss.item() == pytest.approx((torch.tensor([0.5, 0.5, 2.0]) * per_example).sum().item() / 6)


def test_imbalanced_file_trains_with_balanced_weights(tmp_path, tiny_bert_dir):
    data = write_labeled(tmp_path / "skewed.jsonl", {"positive": 40, "negative": 15, "neutral": 5})
    config = tiny_config(tmp_path, tiny_bert_dir, data, "run_name=skewed", "method=full", "train.max_steps=2",
                         "classification.class_weights=balanced", "data.val_fraction=0.0")
    metrics = run_classification(config)
    counts = metrics["data"]["train_labels"]
    total, k = sum(counts.values()), len(counts)
    assert metrics["data"]["class_weights"] == {label: pytest.approx(total / (k * n), abs=1e-4)
                                                for label, n in counts.items()}
    saved = json.loads((tmp_path / "runs" / "skewed" / "model" / "labels.json").read_text())
    assert saved["class_weights"] == pytest.approx([total / (k * counts[label]) for label in saved["labels"]])
    assert len(metrics["tuned"]["confusion_matrix"]["matrix"]) == 3


def test_data_without_labels_is_a_clear_error(tmp_path, tiny_bert_dir, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"the movie was {w}"}) + "\n" for w in ["great", "dull"] * 10))
    code = main(["train", "/dev/null", "task=classification", f"model={tiny_bert_dir}", f"data.train={data}",
                 f"output_dir={tmp_path / 'runs'}"])
    assert code == 2
    assert "classification needs text/label rows" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing half-created


def test_unsupported_method_is_refused_before_loading(tmp_path, sentiment_file):
    with pytest.raises(TunelabError, match="supports method full, lora"):  # with the config's other problems
        load_config(None, ["task=classification", "method=prefix", f"data.train={sentiment_file}",
                           "model=no-such-model"])


def write_rows(path, rows: list[tuple[str, str]]):
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return path


# model fixture, method, learning rate, eval_steps (the tiny encoder learns more slowly, see CASES)
STOPPING_CASES = {
    "encoder-full": ("tiny_bert_dir", "full", 3e-3, 4),
    "decoder-lora": ("tiny_model_dir", "lora", 1e-2, 2),
}


@pytest.mark.parametrize("case", STOPPING_CASES)
def test_early_stopping_stops_on_validation_loss_and_keeps_the_best_weights(request, tmp_path, case):
    fixture, method, learning_rate, eval_steps = STOPPING_CASES[case]
    # Training teaches great -> positive; the val (and test) rows say the opposite, so learning raises val loss.
    train = write_rows(tmp_path / "train.jsonl", [("the movie was great", "positive"),
                                                  ("the movie was awful", "negative")] * 20)
    flipped = write_rows(tmp_path / "flipped.jsonl", [("the movie was great", "negative"),
                                                      ("the movie was awful", "positive")] * 4)
    config = tiny_config(tmp_path, request.getfixturevalue(fixture), train, f"run_name={case}", f"method={method}",
                         f"data.val={flipped}", f"data.test={flipped}", f"train.learning_rate={learning_rate}",
                         "train.max_steps=null", "train.epochs=6", "train.precision=fp32",
                         f"train.early_stopping={{patience: 2, eval_steps: {eval_steps}}}")
    metrics = run_classification(config)
    train_metrics = metrics["train"]
    assert train_metrics["stopped_early"] is True
    assert train_metrics["steps"] < 60  # 6 epochs of 10 steps

    rows = [json.loads(line) for line in (tmp_path / "runs" / case / "train_log.jsonl").open()]
    val_rows = [row for row in rows if "val_loss" in row]
    assert [row["step"] for row in val_rows] == list(range(eval_steps, train_metrics["steps"] + 1, eval_steps))
    best = min(val_rows, key=lambda row: row["val_loss"])
    assert (train_metrics["best_step"], train_metrics["best_val_loss"]) == (best["step"], round(best["val_loss"], 6))
    assert [row["val_loss"] > best["val_loss"] for row in val_rows[-2:]] == [True, True]  # patience 2
    # The test rows are the val rows: the evaluated (and saved) model is the best one, not the last.
    assert metrics["tuned"]["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert metrics["tuned"]["loss"] < val_rows[-1]["val_loss"]


def test_mixed_sources_are_reported_per_source(tmp_path, tiny_model_dir):
    first = write_rows(tmp_path / "plain.jsonl", [("the movie was great", "positive"),
                                                  ("the movie was awful", "negative")] * 20)
    second = write_rows(tmp_path / "fancy.jsonl", [("the movie was brilliant", "positive"),
                                                   ("the movie was tedious", "negative")] * 10)
    config = tiny_config(tmp_path, tiny_model_dir, first, "run_name=mix", "method=lora", "train.learning_rate=1e-2",
                         "data.train=null", f"data.mix=[{{train: {first}}}, {{train: {second}, weight: 2}}]")
    metrics = run_classification(config)

    summary = json.loads((tmp_path / "runs" / "mix" / "data_summary.json").read_text())
    assert summary["train_by_source_before_mixing"] == {"plain": 32, "fancy": 16}
    assert summary["train_by_source"] == {"plain": 16, "fancy": 32}  # 48 rows, weights 1:2
    sizes = summary["test_by_source"]
    assert sizes == {"plain": 4, "fancy": 2}
    for arm in ("base", "tuned"):
        by_source = metrics[arm]["by_source"]
        assert set(by_source) == {"plain", "fancy"}
        for name, size in sizes.items():
            assert {"accuracy", "f1", "ece", "loss", "confusion_matrix"} <= set(by_source[name])
            assert sum(map(sum, by_source[name]["confusion_matrix"]["matrix"])) == size  # its own test rows
        # Per-source results add up to the overall ones, weighted by test rows.
        for key in ("accuracy", "loss"):
            weighted = sum(size * by_source[name][key] for name, size in sizes.items()) / sum(sizes.values())
            assert metrics[arm][key] == pytest.approx(weighted)
    report = (tmp_path / "runs" / "mix" / "report.md").read_text()
    assert "## Evaluation by source" in report and "**plain**" in report and "**fancy**" in report


class ScheduleRecorder(TrainerCallback):
    """The optimizer steps Trainer plans and the learning rate each step trains with."""

    def __init__(self):
        self.max_steps, self.learning_rates = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.max_steps = state.max_steps

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.learning_rates.append(lr_scheduler.get_last_lr()[0])


# overrides -> (optimizer steps, warmup steps = int(warmup_ratio * steps)); 30 train rows, batch_size 4.
# Trainer alone rounds each of these warmups up.
WARMUP_CASES = {
    "max-steps": (["train.max_steps=10", "train.warmup_ratio=0.15"], (10, 1)),
    "one-epoch": (["train.warmup_ratio=0.1"], (8, 0)),  # 8 steps, the last of 2 rows
    "accumulation-two-epochs": (["train.gradient_accumulation=2", "train.epochs=2", "train.warmup_ratio=0.2"],
                                (8, 1)),  # 8 batches of 4 rows, 2 per step: 4 steps per epoch
    "micro-batches-fractional-epochs": (["train.micro_batch_tokens=64", "train.epochs=1.5", "train.warmup_ratio=0.3"],
                                        (12, 3)),  # 15 micro-batches of 2 rows, 2 per step: 8 steps per epoch
}


@pytest.mark.parametrize("case", WARMUP_CASES)
def test_warmup_is_the_ratio_of_all_optimizer_steps_rounded_down(tmp_path, tiny_bert_dir, case):
    overrides, (steps, warmup) = WARMUP_CASES[case]
    train = write_rows(tmp_path / "train.jsonl", [(f"the movie was {w}", label) for w, label in
                                                  [("great", "positive"), ("awful", "negative")] * 15])
    test = write_rows(tmp_path / "test.jsonl", [("the movie was fun", "positive"), ("the movie was dull", "negative")])
    recorder = ScheduleRecorder()
    metrics = run_classification(tiny_config(tmp_path, tiny_bert_dir, train, f"run_name={case}", "method=full",
                                             f"data.test={test}", "data.val_fraction=0", "train.max_steps=null",
                                             "train.lr_scheduler=linear", *overrides), callbacks=[recorder])
    assert metrics["data"]["train"] == 30
    assert recorder.max_steps == metrics["train"]["steps"] == steps
    rates = recorder.learning_rates
    assert len(rates) == steps
    assert rates.index(max(rates)) == warmup  # linear warmup over `warmup` steps, then decay
    assert (rates[0] == 0) == (warmup > 0)
