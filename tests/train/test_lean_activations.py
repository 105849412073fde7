"""Lean RMSNorm and SwiGLU: the model's outputs unchanged, its gradients to rounding, fewer saved bytes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.modeling.fast.lean_activations import LeanRMSNorm, LeanSwiGLU, use_lean_activations


def ids():
    return torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(1))


def forward_and_grads(model):
    logits = model(input_ids=ids()).logits
    logits.float().square().mean().backward()
    return logits.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_outputs_are_identical_and_gradients_match(tiny_model_dir, dtype):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    lean = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    assert use_lean_activations(lean) == 2 * 2 + 1 + 2  # two norms per block, the final norm, one MLP per block
    (logits, grads), (lean_logits, lean_grads) = forward_and_grads(reference), forward_and_grads(lean)
    assert torch.equal(lean_logits, logits)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for name, grad in grads.items():  # every weight trains here, norms included
        torch.testing.assert_close(lean_grads[name], grad, rtol=tolerance, atol=tolerance, msg=name)


def test_backward_formulas_match_autograd_on_their_own():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, requires_grad=True)
    weight = torch.rand(16, requires_grad=True)
    grad = torch.randn(3, 5, 16)
    reference = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))  # the model's ops (RMSNorm
    expected = torch.autograd.grad(reference, (x, weight), grad)                   # computes in fp32)
    got = torch.autograd.grad(LeanRMSNorm.apply(x, weight, 1e-6), (x, weight), grad)
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    gate = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LeanSwiGLU.apply, (gate, up))


def saved_bytes(model) -> int:
    """Bytes of the distinct activation tensors (weights left out) autograd keeps for one forward pass."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in weights:
            storages[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    long_ids = torch.randint(3, 60, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=long_ids).logits.sum().backward()
    return sum(storages.values())


def test_fewer_activation_bytes_are_kept_for_the_backward(tiny_model_dir):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    lean = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    use_lean_activations(lean)
    for model in (reference, lean):
        model.requires_grad_(False)
        model.get_input_embeddings().weight.requires_grad_(True)  # a graph through every layer, no weight grads
    plain, kept = saved_bytes(reference), saved_bytes(lean)
    assert kept < 0.85 * plain, (kept, plain)


def test_other_families_keep_their_modules():
    class OtherRMSNorm(torch.nn.Module):  # a norm whose formula is not known to match
        def forward(self, x):
            return x

    model = torch.nn.Sequential(OtherRMSNorm(), torch.nn.Linear(4, 4))
    assert use_lean_activations(model) == 0
    assert "forward" not in vars(model[0])
