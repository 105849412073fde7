"""task: seq2seq on a tiny random T5: source/target pairs, learning, both eval modes, run folder and clear errors."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.data.dataset import load_splits
from tunelab.data.pairs import Pair, encode_pairs, record_pair
from tunelab.data.records import Record
from tunelab.inference.seq2seq import collator, heldout_target_nll, target_loss_sum
from tunelab.train.seq2seq import run_seq2seq

LABEL_METRICS = {"accuracy", "precision", "recall", "f1", "ece", "confusion_matrix", "loss", "perplexity"}
TEXT_METRICS = {"exact_match", "f1", "rouge_l", "bleu", "loss", "perplexity"}


def write_copy_task(path):
    """Prompt/completion rows with 25 distinct free-text answers (too many to score as labels)."""
    adjectives = ["great", "dull", "wonderful", "terrible", "tedious"]
    nouns = ["movie", "film", "script", "acting", "capital"]
    rows = [{"prompt": f"the {noun} was {adjective}", "completion": f"a {adjective} {noun}"}
            for _ in range(2) for adjective in adjectives for noun in nouns]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              "task=seq2seq", "train.max_steps=12", "train.batch_size=4", "train.logging_steps=1",
                              "train.save_steps=100", "train.max_length=32", "eval.batch_size=8",
                              "eval.max_new_tokens=6", *extra])


# data, method, learning rate, where the trained weights go, the metrics each arm reports
CASES = {
    "full-labels": ("sentiment", "full", 3e-3, "model", LABEL_METRICS),
    "lora-text": ("copy", "lora", 1e-2, "adapter", TEXT_METRICS),
}


@pytest.mark.parametrize("case", CASES)
def test_trains_and_compares_base_with_tuned(tmp_path, tiny_t5_dir, sentiment_file, case):
    data_name, method, learning_rate, saved, expected_metrics = CASES[case]
    data = sentiment_file if data_name == "sentiment" else write_copy_task(tmp_path / "copy.jsonl")
    config = tiny_config(tmp_path, tiny_t5_dir, data, f"run_name={case}", f"method={method}",
                         f"train.learning_rate={learning_rate}", "lora.r=4", "lora.target_modules=[q,v]",
                         "train.precision=fp32")
    metrics = run_seq2seq(config)
    run_dir = tmp_path / "runs" / case

    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").open()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0]
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    assert metrics["train"]["steps"] == 12 and metrics["train"]["tokens"] > 0
    assert [row["step"] for row in log if "val_loss" in row] == list(range(2, 13, 2))  # train.val_loss by default
    for arm in ("base", "tuned"):
        assert set(metrics[arm]) == expected_metrics
    if "confusion_matrix" in expected_metrics:
        assert sum(map(sum, metrics["tuned"]["confusion_matrix"]["matrix"])) == metrics["data"]["test"]

    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert len(rows) == metrics["data"]["test"] > 0
    assert {"input", "reference", "base_prediction", "tuned_prediction", "base_correct",
            "tuned_correct"} <= set(rows[0])
    assert all(isinstance(r["tuned_prediction"], str) for r in rows)
    for name in ("config.yaml", "metrics.json", "report.md", "training_curve.png", "data_summary.json",
                 f"{saved}/tokenizer.json"):
        assert (run_dir / name).exists(), name

    before = load_file(tiny_t5_dir / "model.safetensors")
    if saved == "model":  # every weight trains
        after = load_file(run_dir / "model" / "model.safetensors")
        assert after.keys() == before.keys()
        assert all(not torch.equal(after[k], before[k]) for k in before)
    else:  # only the adapter trains: LoRA r=4 on q and v (32 -> 32) of 6 attention blocks (2 + 2 self, 2 cross)
        assert metrics["train"]["trainable_params"] == 6 * 2 * 4 * (32 + 32)
        adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter)
        assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # lora_B starts at zero
        # The base arm (adapters disabled after training) scores like the untouched model: nothing frozen moved.
        tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
        val = load_splits(config.data, config.train.seed).val
        heldout = encode_pairs(tokenizer, [record_pair(r, None, "{text}", None) for r in val], 32)
        nll, tokens = heldout_target_nll(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), tokenizer, heldout, 8)
        assert metrics["base"]["loss"] == pytest.approx(nll / tokens, rel=1e-5)


def test_source_and_target_of_each_record_kind():
    single = Record("chat", messages=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    assert record_pair(single, None, "{text}", None) == Pair("2+2?", "4", "2+2?")
    assert record_pair(single, None, "{text}", "Be brief.").source == "Be brief.\n\n2+2?"
    turns = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye?"},
             {"role": "assistant", "content": "goodbye"}]
    pair = record_pair(Record("chat", messages=turns), None, "{text}", "ignored: the row has its own")
    assert pair == Pair("Be kind.\n\nUser: hi\nAssistant: hello\nUser: bye?", "goodbye", "bye?")
    labeled = Record("labeled", text="a dull film", label="negative")
    assert record_pair(labeled, ["negative", "positive"], "Label ({choices}): {text}", None) == Pair(
        "Label (negative, positive): a dull film", "negative", "a dull film")


def test_loss_is_summed_over_target_tokens_and_padding_is_ignored(tiny_t5_dir, tiny_tokenizer):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    examples = encode_pairs(tiny_tokenizer, [Pair("the movie was great", "a great movie", ""),
                                             Pair("hello", "the acting was wonderful and the script dull", "")], 32)
    assert all(e.labels[-1] == tiny_tokenizer.eos_token_id for e in examples)  # targets end with the end token
    batch = collator(tiny_tokenizer, model)([{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids),
                                              "labels": e.labels} for e in examples])
    total, count = target_loss_sum(model, batch)
    assert count == sum(len(e.labels) for e in examples)
    # T5's own loss is the mean over non-padding target tokens; ours is the sum.
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert total.item() == pytest.approx(reference.item() * count, rel=1e-5)


def test_decoder_only_model_is_a_clear_error(tmp_path, tiny_model_dir, sentiment_file, capsys):
    code = main(["train", "/dev/null", "task=seq2seq", f"model={tiny_model_dir}", f"data.train={sentiment_file}",
                 f"output_dir={tmp_path / 'runs'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "task: seq2seq needs an encoder-decoder model" in err and "use task: sft" in err
    assert not (tmp_path / "runs").exists()  # nothing half-created


def test_raw_text_is_a_clear_error(tmp_path, tiny_t5_dir, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"the movie was {w}"}) + "\n" for w in ["great", "dull"] * 10))
    code = main(["train", "/dev/null", "task=seq2seq", f"model={tiny_t5_dir}", f"data.train={data}",
                 f"output_dir={tmp_path / 'runs'}"])
    assert code == 2
    assert "raw text has no target; use task: pretrain" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# method, learning rate, extra overrides, trainable parameters of the 32-wide tiny T5 (2 + 2 blocks)
METHOD_CASES = {
    # the last decoder block (self-attention, cross-attention, feed-forward and their norms) and the final norm
    "freeze": ("freeze", 3e-3, ["freeze.last_n_layers=1"], None),
    # 4 virtual keys and values of width 32 in each of the 2 layers
    "prefix": ("prefix", 3e-1, ["prefix.num_virtual_tokens=4"], 4 * 2 * 2 * 32),
    # 4 virtual embeddings of width 32 per transformer stack (peft keeps one block each for encoder and decoder)
    "prompt": ("prompt", 3e-1, ["prompt.num_virtual_tokens=4"], 4 * 2 * 32),
    "dora": ("dora", 1e-2, ["lora.r=4", "lora.target_modules=[q,v]"], 6 * 2 * 4 * (32 + 32) + 6 * 2 * 32),
    "ia3": ("ia3", 3e-2, ["ia3.target_modules=[k,v,wo]", "ia3.feedforward_modules=[wo]"], 6 * 2 * 32 + 4 * 64),
}


@pytest.mark.parametrize("case", METHOD_CASES)
def test_every_method_learns_and_keeps_its_base(tmp_path, tiny_t5_dir, sentiment_file, case):
    method, learning_rate, extra, expected_trainable = METHOD_CASES[case]
    config = tiny_config(tmp_path, tiny_t5_dir, sentiment_file, f"run_name={case}", f"method={method}",
                         f"train.learning_rate={learning_rate}", "train.precision=fp32", *extra)
    metrics = run_seq2seq(config)
    run_dir = tmp_path / "runs" / case

    losses = [row["loss"] for row in map(json.loads, (run_dir / "train_log.jsonl").open()) if "loss" in row]
    assert losses[-1] < losses[0]
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"] - 0.2
    assert set(metrics["base"]) == set(metrics["tuned"]) == LABEL_METRICS

    # The base arm is the untouched model: nothing frozen moved, and virtual tokens are not added to it.
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    data = load_splits(config.data, config.train.seed)
    choices = sorted({r.label for r in data.train})
    heldout = encode_pairs(tokenizer, [record_pair(r, choices, config.data.label_prompt, None) for r in data.val], 32)
    untouched = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    nll, tokens = heldout_target_nll(untouched, tokenizer, heldout, 8)
    assert metrics["base"]["loss"] == pytest.approx(nll / tokens, rel=1e-5)

    if method == "freeze":
        trained = [*untouched.decoder.block[-1].parameters(), *untouched.decoder.final_layer_norm.parameters()]
        assert metrics["train"]["trainable_params"] == sum(p.numel() for p in trained) > 0
        before = load_file(tiny_t5_dir / "model.safetensors")
        after = load_file(run_dir / "model" / "model.safetensors")
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert moved and all(k.startswith(("decoder.block.1.", "decoder.final_layer_norm")) for k in moved)
        assert all(k in moved for k in before if k.startswith("decoder.block.1.") and "weight" in k)
    else:
        assert metrics["train"]["trainable_params"] == expected_trainable
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason='bitsandbytes is not installed (pip install "tunelab[qlora]")')
def test_qlora_trains_an_adapter_on_a_4bit_t5(tmp_path, tiny_t5_64_dir, sentiment_file):
    from tunelab.modeling.load import load_seq2seq

    config = tiny_config(tmp_path, tiny_t5_64_dir, sentiment_file, "run_name=qlora", "method=qlora",
                         "train.learning_rate=1e-2", "lora.r=4", "lora.target_modules=[q,v]", "train.precision=fp32")
    model = load_seq2seq(config)[1]
    assert type(model.encoder.block[0].layer[0].SelfAttention.q).__name__ == "Linear4bit"
    del model
    metrics = run_seq2seq(config)
    losses = [row["loss"] for row in map(json.loads, (tmp_path / "runs" / "qlora" / "train_log.jsonl").open())
              if "loss" in row]
    assert losses[-1] < losses[0]
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"] - 0.2
    # LoRA r=4 on q (64 -> 64) and v of 6 attention blocks; the 4-bit base counts its elements, not its bytes
    assert metrics["train"]["trainable_params"] == 6 * 2 * 4 * (64 + 64)
    assert metrics["train"]["total_params"] > 100_000
