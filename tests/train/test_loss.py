"""The fast loss path agrees with the plain full-logits path."""

import pytest
import torch

from tunelab.data.pack import collate_packed, pack
from tunelab.data.templates import encode_chat
from tunelab.modeling.loss import reference_loss_sum, selective_loss_sum

DIALOGS = [
    [{"role": "user", "content": f"the movie was {w}"}, {"role": "assistant", "content": label}]
    for w, label in [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative")]
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_selective_loss_matches_reference(tiny_model_dir, tiny_tokenizer, dtype, tol):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    rows = pack([encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS], 40)
    batch = collate_packed(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        fast, n_fast = selective_loss_sum(model, batch)
        slow, n_slow = reference_loss_sum(model, batch)
    assert n_fast == n_slow > 0
    assert fast.item() / n_fast == pytest.approx(slow.item() / n_slow, rel=tol)


def test_selective_loss_gradients_match_reference(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = collate_packed(pack([encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS], 64), tiny_tokenizer.pad_token_id)
    grads = []
    for fn in (selective_loss_sum, reference_loss_sum):
        model.zero_grad()
        loss, n = fn(model, batch)
        (loss / n).backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
