"""Every training method on the tiny Llama: what trains, what stays frozen, exact counts, packing, errors."""

import importlib.util
import json
import sys

import pytest
import torch

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.data.pack import collate_packed, collate_padded
from tunelab.data.templates import encode_chat
from tunelab.errors import ConfigError, TunelabError
from tunelab.modeling.loss import loss_sum
from tunelab.modeling.methods import VIRTUAL_TOKEN_METHODS, WHOLE_MODEL_METHODS, apply_method, parameter_counts
from tunelab.modeling.precision import autocast_like
from tunelab.train.setup import load_base
from tunelab.train.sft import run_sft

needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                        reason='bitsandbytes is not installed (pip install "tunelab[qlora]")')

# The conftest Llama: 2 blocks, hidden 64, 4 query heads and 2 key/value heads of 16 (kv width 32), MLP 128.
LAYERS, HIDDEN, KV, MLP = 2, 64, 32, 128
BLOCK = (2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV) + 3 * HIDDEN * MLP + 2 * HIDDEN  # attention, MLP, two norms
BASE_TOTAL = 398 * HIDDEN + LAYERS * BLOCK + HIDDEN  # tied embeddings/head, blocks, final norm
LORA_QV = ["lora.r=8", "lora.target_modules=[q_proj,v_proj]"]
LORA_QV_COUNT = LAYERS * 8 * ((HIDDEN + HIDDEN) + (HIDDEN + KV))  # r * (in + out) for q_proj and v_proj

# (method, overrides, trainable parameters)
METHODS = [
    pytest.param("lora", LORA_QV, LORA_QV_COUNT, id="lora"),
    pytest.param("rslora", LORA_QV, LORA_QV_COUNT, id="rslora"),
    pytest.param("dora", LORA_QV, LORA_QV_COUNT + LAYERS * (HIDDEN + KV), id="dora"),  # + a magnitude per output
    pytest.param("qlora", LORA_QV, LORA_QV_COUNT, id="qlora", marks=needs_bitsandbytes),
    pytest.param("ia3", [], LAYERS * (KV + KV + MLP), id="ia3"),  # k_proj, v_proj outputs; down_proj inputs
    pytest.param("prefix", ["prefix.num_virtual_tokens=4"], 4 * LAYERS * 2 * KV, id="prefix"),  # a key and a value
    pytest.param("prompt", ["prompt.num_virtual_tokens=4"], 4 * HIDDEN, id="prompt"),
    pytest.param("prompt", ["prompt.num_virtual_tokens=4", "prompt.init_text=classify the movie"], 4 * HIDDEN,
                 id="prompt-init-text"),
    pytest.param("freeze", ["freeze.last_n_layers=1"], BLOCK + HIDDEN, id="freeze"),  # last block, final norm
    pytest.param("freeze", ["freeze.last_n_layers=0", "freeze.train_norm=false", "freeze.modules=['*.mlp']"],
                 LAYERS * 3 * HIDDEN * MLP, id="freeze-modules"),
    pytest.param("full", [], BASE_TOTAL, id="full"),
]

DIALOGS = [
    [{"role": "user", "content": f"the movie was {w}"}, {"role": "assistant", "content": label}]
    for w, label in [("great", "positive"), ("dull and tedious", "negative"), ("wonderful", "positive"),
                     ("awful", "negative")]
]


@pytest.fixture(autouse=True)
def one_thread():
    """At 64 wide, handing work between threads costs more than the matmuls (a step took 50x longer on
    two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def method_config(model_dir, method, *overrides):
    return load_config(None, [f"model={model_dir}", f"method={method}", *overrides], require_train_data=False)


def batch_for(method, tokenizer, dialogs=DIALOGS):
    """The four dialogs as training sees them: one packed row, or one padded row each for virtual tokens."""
    examples = [encode_chat(tokenizer, d, 64) for d in dialogs]
    if method in VIRTUAL_TOKEN_METHODS:
        return collate_padded([[e] for e in examples], tokenizer.pad_token_id)
    return collate_packed([examples], tokenizer.pad_token_id)


def mean_loss(model, batch):
    with autocast_like(model):
        total, count = loss_sum(model, batch)
    return total / count


@pytest.mark.parametrize("method,overrides,trainable", METHODS)
def test_method_trains_only_its_parameters(tiny_model_dir, method, overrides, trainable):
    torch.manual_seed(0)
    config = method_config(tiny_model_dir, method, *overrides, "train.precision=bf16")
    tokenizer, model = load_base(config)
    # Train mode throughout, as in Trainer: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights
    # for inference at the first eval-mode forward, and gradients no longer pass through them after that.
    model.train()
    batch = batch_for(method, tokenizer)
    with torch.no_grad():
        base_loss = mean_loss(model, batch).item()
    model = apply_method(model, config)
    counts = parameter_counts(model)
    assert counts["trainable_params"] == trainable
    assert counts["total_params"] == BASE_TOTAL + (0 if method in WHOLE_MODEL_METHODS else trainable)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(8):
        loss = mean_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, f"{name} (trainable: {p.requires_grad})"
        if p.requires_grad:
            assert p.dtype == torch.float32, name  # what trains keeps fp32 weights

    if method not in WHOLE_MODEL_METHODS:  # the baseline arm of evaluation
        with model.disable_adapter(), torch.no_grad():
            assert mean_loss(model, batch).item() == pytest.approx(base_loss, rel=1e-2)


@pytest.mark.parametrize("method,overrides,trainable", [p for p in METHODS if p.values[0] not in VIRTUAL_TOKEN_METHODS])
def test_packed_loss_matches_examples_run_alone(tiny_model_dir, method, overrides, trainable):
    torch.manual_seed(0)
    config = method_config(tiny_model_dir, method, *overrides, "train.precision=fp32")
    tokenizer, model = load_base(config)
    model = apply_method(model, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # move adapters off their identity start (LoRA's B is zero, IA3 is ones)
                p.add_(0.1 * torch.randn_like(p))
        packed = mean_loss(model, batch_for(method, tokenizer))
        totals = [loss_sum(model, batch_for(method, tokenizer, [d])) for d in DIALOGS]
    alone = sum(t for t, _ in totals) / sum(n for _, n in totals)
    assert packed.item() == pytest.approx(alone.item(), rel=1e-4)


@pytest.mark.parametrize("method", VIRTUAL_TOKEN_METHODS)
def test_virtual_token_methods_train_one_example_per_row(tiny_model_dir, method):
    config = method_config(tiny_model_dir, method, "train.precision=fp32")
    tokenizer, model = load_base(config)
    model = apply_method(model, config)
    with torch.no_grad():
        padded = mean_loss(model, batch_for(method, tokenizer))
        totals = [loss_sum(model, batch_for(method, tokenizer, [d])) for d in DIALOGS]
        alone = sum(t for t, _ in totals) / sum(n for _, n in totals)
        assert padded.item() == pytest.approx(alone.item(), rel=1e-4)  # padding changes nothing
        packed = collate_packed([[encode_chat(tokenizer, d, 64) for d in DIALOGS]], tokenizer.pad_token_id)
        with pytest.raises(RuntimeError):  # why these methods do not pack: peft cannot extend a 4D mask
            loss_sum(model, packed)


@pytest.mark.parametrize("method,overrides,trainable", [
    pytest.param("freeze", ["freeze.last_n_layers=1"], BLOCK + HIDDEN, id="freeze"),
    pytest.param("prefix", ["prefix.num_virtual_tokens=4"], 4 * LAYERS * 2 * KV, id="prefix"),
    pytest.param("prompt", ["prompt.num_virtual_tokens=4"], 4 * HIDDEN, id="prompt"),
    pytest.param("ia3", [], LAYERS * (KV + KV + MLP), id="ia3"),
    pytest.param("qlora", LORA_QV, LORA_QV_COUNT, id="qlora", marks=needs_bitsandbytes),
])
def test_recipe_trains_evaluates_and_saves(tmp_path, tiny_model_dir, sentiment_file, capsys, method, overrides,
                                           trainable):
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train={sentiment_file}", f"method={method}",
                                f"output_dir={tmp_path / 'runs'}", "run_name=run", "train.max_steps=8",
                                "train.batch_size=4", "train.learning_rate=3e-2", "train.max_length=64",
                                "train.save_steps=100", "eval.batch_size=8", "eval.max_new_tokens=2",
                                "eval.max_examples=4", *overrides])
    metrics = run_sft(config)
    run_dir = tmp_path / "runs" / "run"
    assert metrics["train"]["trainable_params"] == trainable
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["trainable_params"] == trainable
    assert (run_dir / ("model" if method in WHOLE_MODEL_METHODS else "adapter")).is_dir()
    packing_note = "packing: off" in capsys.readouterr().out
    assert packing_note == (method in VIRTUAL_TOKEN_METHODS)
    if method in VIRTUAL_TOKEN_METHODS:
        assert metrics["train"]["rows"] == metrics["train"]["examples"]


@needs_bitsandbytes
def test_qlora_base_is_4bit_and_counted_by_elements(tiny_model_dir):
    config = method_config(tiny_model_dir, "qlora", *LORA_QV)
    _, model = load_base(config)
    packed = {type(p).__name__ for p in model.parameters()}
    assert "Params4bit" in packed
    assert sum(p.numel() for p in model.parameters()) < BASE_TOTAL  # two 4-bit values per stored byte
    assert parameter_counts(model)["total_params"] == BASE_TOTAL


def test_qlora_without_bitsandbytes_is_one_clear_line(tmp_path, tiny_model_dir, sentiment_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    code = main(["train", "/dev/null", f"model={tiny_model_dir}", f"data.train={sentiment_file}", "method=qlora",
                 f"output_dir={tmp_path / 'runs'}"])
    assert code == 2
    assert capsys.readouterr().err == 'error: method: qlora needs bitsandbytes: pip install "tunelab[qlora]"\n'
    assert not (tmp_path / "runs").exists()


def test_nonsense_method_settings_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["freeze.last_n_layers=0", "prefix.num_virtual_tokens=0", "prompt.init_text=''",
                           "ia3.feedforward_modules=[down_proj]", "qlora.compute_dtype=fp16", "method=adapter"],
                    require_train_data=False)
    text = str(info.value)
    for key in ("freeze", "prefix.num_virtual_tokens", "prompt.init_text", "ia3", "qlora.compute_dtype", "method"):
        assert f"  - {key}" in text
    assert len(info.value.problems) == 6
    with pytest.raises(ConfigError, match="not in target_modules"):
        load_config(None, ["ia3.target_modules=[k_proj]", "ia3.feedforward_modules=[down_proj]"],
                    require_train_data=False)


@pytest.mark.parametrize("override,message", [
    ("freeze.last_n_layers=3", "has 2 transformer blocks"),
    ("freeze.modules=['*.no_such_module']", "matches no module"),
])
def test_freeze_settings_the_model_cannot_meet_are_clear_errors(tiny_model_dir, override, message):
    config = method_config(tiny_model_dir, "freeze", override)
    _, model = load_base(config)
    with pytest.raises(TunelabError, match=message):
        apply_method(model, config)
