"""The single-rounding LoRA forward: same function as peft's, fewer roundings, and only where it applies."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.modeling.fast.lora_forward import use_single_rounding
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.methods import load_adapter


def tiny_lora(tiny_model_dir, dtype=torch.float32, **lora):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; a trained adapter is not
            param.data.normal_(0, 0.05)
    return model


def ids():
    return torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(1))


def test_logits_and_gradients_match_peft_in_fp32(tiny_model_dir):
    reference, fast = tiny_lora(tiny_model_dir), tiny_lora(tiny_model_dir)
    assert use_single_rounding(fast) == 2 * 7  # q, k, v, o, gate, up, down in both blocks
    results = []
    for model in (reference, fast):
        logits = model(input_ids=ids()).logits
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6)


def test_bf16_update_is_rounded_once_into_the_base_output():
    """An update far below a bf16 step of the output survives only if it joins the base matmul before
    rounding: how much of it reaches the output, on average, is the regression slope of (output - base
    output) on the update."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256, bias=False).to(torch.bfloat16)
    model = get_peft_model(torch.nn.Sequential(layer), LoraConfig(r=4, lora_alpha=4, target_modules=["0"]))
    lora = model.base_model.model[0]
    torch.nn.init.normal_(lora.lora_B["default"].weight, std=1e-4)
    x = torch.randn(64, 256).to(torch.bfloat16)
    with torch.no_grad():
        update = lora.lora_B["default"](lora.lora_A["default"](x.float()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base_out = layer(x).float()
            peft_out = model(x).float()
            use_single_rounding(model)
            ours = model(x).float()

    def carried(out):
        return float(((out - base_out) * update).sum() / update.square().sum())

    assert update.abs().median() < 1e-3 * (base_out + update).abs().median()  # well below half a bf16 step
    assert carried(peft_out) < 0.5
    assert carried(ours) > 0.9


def test_disabled_adapter_gives_the_base_model(tiny_model_dir):
    model = tiny_lora(tiny_model_dir)
    use_single_rounding(model)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=ids()).logits, plain(input_ids=ids()).logits)
    assert not torch.allclose(model(input_ids=ids()).logits, plain(input_ids=ids()).logits)


@pytest.mark.parametrize("lora", [{"use_dora": True}, {}])
def test_only_plain_lora_layers_take_the_path(tiny_model_dir, lora):
    from peft.tuners.lora import Linear

    model = tiny_lora(tiny_model_dir, **lora)
    patched = use_single_rounding(model)
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    if lora:  # DoRA is a variant: peft's forward runs
        with torch.no_grad():
            before = model(input_ids=ids()).logits
        assert all(layer.lora_variant for layer in layers)
        torch.testing.assert_close(model(input_ids=ids()).logits, before)
    else:
        assert patched == len(layers) and all("forward" in layer.__dict__ for layer in layers)


def test_saved_adapter_loads_with_the_same_forward(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_lora(tiny_model_dir, dtype=torch.bfloat16)
    use_single_rounding(model)
    model.save_pretrained(tmp_path / "adapter")
    loaded = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16),
                          tmp_path / "adapter")
    prepare_for_inference(loaded)  # as load_run() loads every saved adapter
    assert all("forward" in m.__dict__ for m in loaded.modules() if type(m).__name__ == "Linear"
               and hasattr(m, "lora_A"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loaded(input_ids=ids()).logits, model(input_ids=ids()).logits)


def test_mixed_adapter_rows_get_exactly_what_they_get_alone(tiny_model_dir):
    """A served batch names an adapter (or ``__base__``) per row; each row's logits must be bit for bit
    those of the row run alone with its adapter active, as ``tunelab eval`` runs it (bf16 weights)."""
    model = tiny_lora(tiny_model_dir, dtype=torch.bfloat16)
    second = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model.add_adapter("second", second)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    use_single_rounding(model.eval())
    rows = torch.randint(3, 60, (4, 10), generator=torch.Generator().manual_seed(2))
    names = ["second", "__base__", "default", "second"]
    with torch.no_grad():
        mixed = model(input_ids=rows, adapter_names=names).logits
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(input_ids=rows[row:row + 1]).logits
            else:
                model.set_adapter(name)
                alone = model(input_ids=rows[row:row + 1]).logits
            assert torch.equal(mixed[row], alone[0]), name
    assert not torch.equal(mixed[0], mixed[2])  # the adapters differ
