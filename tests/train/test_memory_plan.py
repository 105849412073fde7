"""Micro-batching bounds memory without changing the update."""

from types import SimpleNamespace

import pytest
import torch

from tunelab.data.pack import collate_packed
from tunelab.data.templates import encode_chat
from tunelab.modeling.loss import loss_sum
from tunelab.train.fit import AnswerLossTrainer, micro_batch_plan


@pytest.mark.parametrize("batch,length,budget,expected", [
    (8, 512, 1024, (2, 4)),
    (8, 512, 4096, (8, 1)),
    (4, 256, 1024, (4, 1)),
    (6, 512, 2048, (3, 2)),   # largest divisor of 6 that fits 4 rows
    (5, 512, 1024, (1, 5)),
    (2, 4096, 1024, (1, 2)),  # one row is over budget on its own: one row per micro-batch
])
def test_micro_batch_plan(batch, length, budget, expected):
    rows, steps = micro_batch_plan(batch, length, budget)
    assert (rows, steps) == expected and rows * steps == batch


def test_accumulated_micro_batches_give_the_full_batch_gradient(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    words = [("great", "positive"), ("dull", "negative"), ("a wonderful, moving film", "positive"), ("awful", "negative")]
    rows = [[encode_chat(tiny_tokenizer, [{"role": "user", "content": f"the movie was {w}"},
                                          {"role": "assistant", "content": label}], 64)] for w, label in words]
    pad = tiny_tokenizer.pad_token_id
    full = collate_packed(rows, pad)
    total = int((full["labels"][:, 1:] != -100).sum())
    trainer = SimpleNamespace(loss_fn=loss_sum)  # compute_loss reads only the loss function
    compute_loss = AnswerLossTrainer.compute_loss

    model.zero_grad()
    compute_loss(trainer, model, full, num_items_in_batch=total).backward()
    reference = model.model.layers[1].mlp.up_proj.weight.grad.clone()

    model.zero_grad()
    for half in (rows[:1], rows[1:]):  # unequal halves with unequal token counts
        compute_loss(trainer, model, collate_packed(half, pad), num_items_in_batch=total).backward()
    assert torch.allclose(model.model.layers[1].mlp.up_proj.weight.grad, reference, atol=1e-6)


def test_freed_memory_goes_back_every_few_steps_not_every_step(monkeypatch):
    from tunelab.train import fit as common

    released_at = []
    state = SimpleNamespace(global_step=0)
    monkeypatch.setattr(common, "release_memory", lambda: released_at.append(state.global_step))
    callback = common.ReleaseMemoryCallback(every=4)
    for step in range(1, 10):
        state.global_step = step
        callback.on_step_end(None, state, None)
    assert released_at == [4, 8]
    assert common.ReleaseMemoryCallback().every == common.RELEASE_EVERY_STEPS > 1



LARGE_BLOCKS_SCRIPT = """
import torch
from tunelab.modeling.fast.memory import return_large_blocks_at_once

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

print(return_large_blocks_at_once())
for _ in range(3):  # a block of the size of one activation, written and freed
    before = resident_mb()
    block = torch.ones(3 * 1024 * 1024 // 4)  # 3 MB
    written = resident_mb() - before
    del block
    print(written, resident_mb() - before)
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="Linux only")
def test_large_blocks_go_back_to_the_system_as_soon_as_they_are_freed():
    # A fresh process: blocks freed to the heap earlier would be reused before any new mapping.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LARGE_BLOCKS_SCRIPT], capture_output=True, text=True, check=True)
    first, *blocks = out.stdout.split("\n")[:4]
    assert first == "True"  # glibc here
    for line in blocks[1:]:  # the 1st also pays torch's first-use allocations; glibc's default keeps the 2nd
        # and 3rd block's pages on the heap (it raises its threshold to the largest block freed)
        written, left = map(float, line.split())
        assert written > 2 and left < 1, out.stdout
