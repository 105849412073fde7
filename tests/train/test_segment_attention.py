"""Segment attention: a packed row attended one example at a time equals the examples run alone."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from tunelab.data.pack import collate_packed, pack, to_device
from tunelab.data.templates import encode_chat
from tunelab.modeling.fast import segment_attention
from tunelab.modeling.fast.segment_attention import (
    SegmentAttention,
    supports_segment_attention,
    use_segment_attention,
    uses_segment_attention,
)
from tunelab.modeling.loss import decoder_inputs, reference_loss_sum, selective_loss_sum
from tunelab.train.steps import plan_steps

DIALOGS = [
    [{"role": "user", "content": f"the movie was {w}"}, {"role": "assistant", "content": label}]
    for w, label in [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative"),
                     ("a long and winding tale of nothing much", "negative")]
]


def _model(tiny_model_dir, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation="sdpa")
    assert use_segment_attention(model)
    return model


def test_one_row_loss_equals_sum_of_examples_alone(tiny_model_dir, tiny_tokenizer):
    model = _model(tiny_model_dir)
    examples = [encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS]
    batch = collate_packed([examples], tiny_tokenizer.pad_token_id, pad_to_multiple_of=64, segments=True)
    lengths = [len(e.input_ids) for e in examples]
    assert batch["input_ids"].shape[0] == 1 and batch["packed_segments"][0, :len(examples)].tolist() == lengths
    assert batch["input_ids"][0, :sum(lengths)].tolist() == [t for e in examples for t in e.input_ids]
    with torch.no_grad():
        packed, n_packed = selective_loss_sum(model, batch)
        alone = [reference_loss_sum(model, collate_packed([[e]], tiny_tokenizer.pad_token_id)) for e in examples]
    assert n_packed == sum(n for _, n in alone) > 0
    assert packed.item() == pytest.approx(sum(loss.item() for loss, _ in alone), rel=1e-5)


def test_segment_and_block_mask_paths_give_the_same_gradients(tiny_model_dir, tiny_tokenizer):
    model = _model(tiny_model_dir)
    rows = pack([encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS], 48)  # several rows, several examples each
    assert len(rows) > 1 and any(len(row) > 1 for row in rows)
    grads = []
    for segments in (True, False):
        batch = collate_packed(rows, tiny_tokenizer.pad_token_id, segments=segments)
        if not segments:
            model.set_attn_implementation("sdpa")
        model.zero_grad()
        loss, n = selective_loss_sum(model, batch)
        (loss / n).backward()
        grads.append(model.model.layers[0].self_attn.k_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("lengths,block_scores", [
    ([77, 130, 5, 64], None),  # lengths off the padding multiple, one with a single token
    ([700, 33], None),  # longer than probabilities are kept for: recomputed in the backward pass
    ([300, 140], 64 * 128),  # several blocks of queries per example
])
@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4)])
def test_kernel_matches_causal_sdpa_on_each_example(monkeypatch, lengths, block_scores, heads, kv_heads):
    if block_scores:
        monkeypatch.setattr(segment_attention, "BLOCK_SCORES", block_scores)
    torch.manual_seed(0)
    dim, total = 16, sum(lengths)
    q = torch.randn(1, heads, total, dim, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, kv_heads, total, dim, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weights = torch.randn(1, total, heads, dim, dtype=torch.float64)
    out = SegmentAttention.apply(q, k, v, [lengths], 0.3)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    pieces, start = [], 0
    for n in lengths:
        span = slice(start, start + n)
        pieces.append(F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span], is_causal=True,
                                                     scale=0.3, enable_gqa=True))
        start += n
    expected = torch.cat(pieces, dim=2).transpose(1, 2)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    assert torch.allclose(out, expected, atol=1e-10)
    for grad, reference in zip(grads, expected_grads):
        assert torch.allclose(grad, reference, atol=1e-10)


def test_generation_without_segments_runs_plain_sdpa(tiny_model_dir, tiny_tokenizer):
    """Evaluation and generation (no packed_segments) are unchanged by the switch."""
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    switched = _model(tiny_model_dir)
    ids = torch.tensor([tiny_tokenizer("the movie was great")["input_ids"]])
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tiny_tokenizer.pad_token_id}
    assert torch.equal(plain.generate(ids, **kwargs), switched.generate(ids, **kwargs))


def test_a_segment_batch_never_reaches_a_model_without_segment_attention(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    batch = collate_packed([[encode_chat(tiny_tokenizer, DIALOGS[0], 512)]], tiny_tokenizer.pad_token_id,
                           segments=True)
    assert not uses_segment_attention(model)
    with pytest.raises(ValueError, match="segment attention"):
        decoder_inputs(model, batch)


@pytest.mark.parametrize("changes,supported", [
    ({}, True),
    ({"sliding_window": 64}, False),
    ({"layer_types": ["full_attention", "sliding_attention"]}, False),
    ({"layer_types": ["full_attention", "full_attention"]}, True),
])
def test_only_plain_causal_attention_is_switched(changes, supported):
    config = LlamaConfig(num_hidden_layers=2)
    for key, value in changes.items():
        setattr(config, key, value)
    assert supports_segment_attention(config) is supported


def test_unknown_and_soft_capped_models_keep_their_attention():
    assert not supports_segment_attention(AutoConfig.for_model("gpt2"))
    assert not supports_segment_attention(AutoConfig.for_model("gemma2"))  # soft-capped, sliding layers


def test_one_row_plan_puts_each_micro_batch_in_one_row(tiny_tokenizer):
    examples = [encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS] * 8
    plan = plan_steps(examples, examples_per_step=8, max_length=24, micro_batch_tokens=96, packing=True,
                      one_row=True)
    assert all(len(rows) == 1 for rows in plan.micro_batches if rows)
    assert max(sum(len(e.input_ids) for e in rows[0]) for rows in plan.micro_batches if rows) <= 96
    assert sum(len(rows[0]) for rows in plan.micro_batches if rows) == len(examples)


def test_to_device_moves_every_tensor(tiny_tokenizer):
    batch = collate_packed([[encode_chat(tiny_tokenizer, DIALOGS[0], 512)]], tiny_tokenizer.pad_token_id,
                           segments=True)
    moved = to_device(batch, torch.device("cpu"))
    assert torch.equal(moved["packed_segments"], batch["packed_segments"])


def test_a_run_with_segment_attention_trains_like_one_with_masks(tmp_path, tiny_model_dir, sentiment_file):
    import json

    from tunelab.config import load_config
    from tunelab.train.sft import run_sft

    losses = {}
    for kind in ("mask", "segments"):
        config = load_config(None, [
            f"model={tiny_model_dir}", f"data.train={sentiment_file}", f"output_dir={tmp_path / 'runs'}",
            f"run_name={kind}", f"train.packed_attention={kind}", "train.precision=fp32", "train.max_steps=4",
            "train.batch_size=8", "train.micro_batch_tokens=128", "train.max_length=64", "train.logging_steps=1",
            "eval.max_examples=4", "eval.max_new_tokens=2", "eval.baseline=false"])
        run_sft(config)
        log = (tmp_path / "runs" / kind / "train_log.jsonl").open()
        losses[kind] = [row["loss"] for row in map(json.loads, log) if "loss" in row]
    assert len(losses["segments"]) == 4
    assert losses["segments"] == pytest.approx(losses["mask"], rel=1e-4)
