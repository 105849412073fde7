"""Early stopping: validation loss every eval_steps, stop after patience, best weights restored."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

from tunelab.config import load_config
from tunelab.data.dataset import load_splits
from tunelab.data.templates import label_choices
from tunelab.errors import ConfigError, TunelabError
from tunelab.eval.suite import build_eval_task
from tunelab.train.early_stopping import EarlyStopping, validation_loss
from tunelab.train.sft import run_sft


def write_chat(path, pairs, n):
    path.write_text("".join(json.dumps({"prompt": pairs[i % len(pairs)][0], "completion": pairs[i % len(pairs)][1]})
                            + "\n" for i in range(n)))
    return path


@pytest.fixture
def diverging_data(tmp_path):
    """Training answers a movie's mood; validation asks unrelated questions, so overfitting raises val loss."""
    train = write_chat(tmp_path / "train.jsonl", [("the movie was great", "positive"),
                                                   ("the movie was dull", "negative")], 40)
    val = write_chat(tmp_path / "val.jsonl", [("What is the capital of France?", "Paris is the capital of France."),
                                              ("Hello! How are you today?", "I am fine, thank you.")], 8)
    return train, val


def test_stops_early_and_restores_the_best_weights(tmp_path, tiny_model_dir, diverging_data):
    train, val = diverging_data
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train={train}", f"data.val={val}",
                                f"output_dir={tmp_path}", "run_name=es", "method=full", "train.precision=fp32",
                                "train.max_steps=60", "train.batch_size=2", "train.learning_rate=3e-2",
                                "train.max_length=64", "train.save_steps=1000", "eval.max_new_tokens=2",
                                "train.early_stopping={patience: 2, eval_steps: 2}"])
    metrics = run_sft(config)
    train_metrics = metrics["train"]
    assert train_metrics["stopped_early"] is True
    assert train_metrics["steps"] < 60

    rows = [json.loads(line) for line in (tmp_path / "es" / "train_log.jsonl").open()]
    val_rows = [row for row in rows if "val_loss" in row]
    assert [row["step"] for row in val_rows] == list(range(2, train_metrics["steps"] + 1, 2))
    best = min(val_rows, key=lambda row: row["val_loss"])
    assert (train_metrics["best_step"], train_metrics["best_val_loss"]) == (best["step"], round(best["val_loss"], 6))
    assert val_rows[-1]["val_loss"] > best["val_loss"]  # the last weights were worse: restoring mattered
    assert [row["val_loss"] > best["val_loss"] for row in val_rows[-2:]] == [True, True]  # patience 2

    # The saved model is the best one: its validation loss, computed afresh, is the best logged loss.
    model_dir = tmp_path / "es" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = load_splits(config.data, config.train.seed)
    task = build_eval_task(tokenizer, [], splits.val, splits.kind, label_choices(splits.train, splits.kind),
                           config.data.label_prompt, None, config.train.max_length)
    loss = validation_loss(model, task.heldout, config.train.max_length, tokenizer.pad_token_id, 4)
    assert loss == pytest.approx(best["val_loss"], rel=1e-5)


def test_early_stopping_needs_validation_rows(tmp_path):
    with pytest.raises(ConfigError, match="early_stopping needs validation rows"):
        load_config(None, ["data.train=x.jsonl", "data.val_fraction=0", "train.early_stopping={patience: 2}"])


def test_a_recipe_can_give_its_own_validation_loss(tmp_path):
    """Classification stops on its head's cross-entropy: any loss_fn(model, val examples) drives the callback."""
    config = load_config(None, ["data.train=x.jsonl", "train.early_stopping={patience: 2, eval_steps: 1}"])
    losses = {1: 3.0, 2: 1.0, 3: 1.5, 4: 2.0, 5: 0.5}  # best at step 2, then two evaluations without improvement
    seen = []

    def loss_fn(model, examples):
        seen.append(examples)
        return losses[state.global_step]

    stopper = EarlyStopping.from_config(config, ["val row"], 0, tmp_path, loss_fn=loss_fn)
    model, state, control = torch.nn.Linear(2, 1), TrainerState(max_steps=5), TrainerControl()
    while not control.should_training_stop:
        state.global_step += 1
        with torch.no_grad():
            model.weight.fill_(state.global_step)  # the weights after this step
        stopper.on_step_end(None, state, control, model=model)
    stopper.on_train_end(None, state, control, model=model)

    assert state.global_step == 4 and seen == [["val row"]] * 4
    assert stopper.summary() == {"best_val_loss": 1.0, "best_step": 2, "stopped_early": True}
    assert model.weight.tolist() == [[2.0, 2.0]]  # step 2's weights are back
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").open()]
    assert [(row["step"], row["val_loss"]) for row in rows] == [(1, 3.0), (2, 1.0), (3, 1.5), (4, 2.0)]
    with pytest.raises(TunelabError, match="val split is empty"):
        EarlyStopping.from_config(config, [], 0, tmp_path, loss_fn=loss_fn)
