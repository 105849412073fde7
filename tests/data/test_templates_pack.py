"""Prompt masking, packing and the block-causal mask."""

import pytest
import torch

from tunelab.data.pack import collate_packed, pack
from tunelab.data.records import Record
from tunelab.data.templates import IGNORE_INDEX, encode_chat, prompt_text, record_to_messages

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "the movie was great"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "Hello! How are you today?"},
    {"role": "assistant", "content": "I am fine, thank you."},
]


def trained_text(tokenizer, encoded):
    return tokenizer.decode([t for t, l in zip(encoded.input_ids, encoded.labels) if l != IGNORE_INDEX])


def test_loss_only_on_every_assistant_turn_and_its_end_token(tiny_tokenizer):
    encoded = encode_chat(tiny_tokenizer, CHAT, 512)
    assert trained_text(tiny_tokenizer, encoded) == "positive<|im_end|>I am fine, thank you.<|im_end|>"
    assert encoded.input_ids == tiny_tokenizer(tiny_tokenizer.apply_chat_template(CHAT, tokenize=False),
                                               add_special_tokens=False)["input_ids"]


def test_prompt_for_evaluation_is_the_training_prefix(tiny_tokenizer):
    """Train, eval and serve render the same text: the eval prompt is a prefix of the training text."""
    full = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    prompt = prompt_text(tiny_tokenizer, CHAT)
    assert full.startswith(prompt) and full[len(prompt):].startswith("I am fine")


def test_labeled_record_becomes_an_instruction_with_the_label_as_answer():
    record = Record(kind="labeled", text="dull film", label="negative")
    messages = record_to_messages(record, choices=["negative", "positive"])
    assert "dull film" in messages[0]["content"] and "negative, positive" in messages[0]["content"]
    assert messages[1] == {"role": "assistant", "content": "negative"}


def test_truncation_keeps_labels_aligned(tiny_tokenizer):
    encoded = encode_chat(tiny_tokenizer, CHAT, 10)
    assert len(encoded.input_ids) == len(encoded.labels) == 10


def test_pack_fills_rows_in_order_without_splitting_examples(tiny_tokenizer):
    examples = [encode_chat(tiny_tokenizer, CHAT[1:3], 512) for _ in range(5)]
    n = len(examples[0].input_ids)
    rows = pack(examples, 2 * n + 1)
    assert [len(r) for r in rows] == [2, 2, 1]


def test_block_causal_mask_isolates_examples(tiny_tokenizer):
    a = encode_chat(tiny_tokenizer, CHAT[1:3], 512)
    b = encode_chat(tiny_tokenizer, CHAT[3:5], 512)
    batch = collate_packed([[a, b], [a]], tiny_tokenizer.pad_token_id)
    mask = batch["attention_mask"]
    la, lb = len(a.input_ids), len(b.input_ids)
    assert mask.shape == (2, 1, la + lb, la + lb)
    assert not mask[0, 0, la:, :la].any()  # b never sees a
    assert mask[0, 0, la + lb - 1, la:].all()  # b sees all of itself
    assert batch["position_ids"][0, la].item() == 0
    assert batch["labels"][0, la].item() == IGNORE_INDEX  # no target across the boundary
    assert (batch["input_ids"][1, la:] == tiny_tokenizer.pad_token_id).all()
    assert mask[1, 0].any(dim=-1).all()  # no fully masked row (would give NaN)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_sum_of_separate_losses(tiny_model_dir, tiny_tokenizer, attn):
    from transformers import AutoModelForCausalLM

    from tunelab.modeling.loss import reference_loss_sum, selective_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    examples = [encode_chat(tiny_tokenizer, CHAT[1:3], 512), encode_chat(tiny_tokenizer, CHAT[3:5], 512),
                encode_chat(tiny_tokenizer, CHAT, 512)]
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        packed, n_packed = selective_loss_sum(model, collate_packed([examples], pad))
        separate = [reference_loss_sum(model, collate_packed([[e]], pad)) for e in examples]
    assert n_packed == sum(n for _, n in separate) == sum(e.loss_tokens for e in examples)
    assert packed.item() == pytest.approx(sum(l.item() for l, _ in separate), rel=1e-5)


def test_padding_to_a_multiple_changes_shapes_not_losses(tiny_tokenizer, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.modeling.loss import loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = pack([encode_chat(tiny_tokenizer, [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
                             64) for text in ("great film", "a dull, tedious film with a terrible script")], 64)
    plain = collate_packed(rows, tiny_tokenizer.pad_token_id)
    rounded = collate_packed(rows, tiny_tokenizer.pad_token_id, pad_to_multiple_of=16)
    assert rounded["input_ids"].shape[1] % 16 == 0 and rounded["input_ids"].shape[1] > plain["input_ids"].shape[1]
    with torch.no_grad():
        (a, n), (b, m) = loss_sum(model, plain), loss_sum(model, rounded)
    assert n == m and torch.allclose(a, b, atol=1e-5)
