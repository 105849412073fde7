"""Optimizer steps of ``batch_size`` examples, each run as a fixed number of packed micro-batches.

``train.batch_size`` counts examples, as in every other trainer, so packing changes the speed of
an update and never its number or content: 128 examples at batch size 8 are 16 updates, packed or
not. Within a step the examples are spread over micro-batches, balanced by tokens and each at most
``micro_batch_tokens`` (the memory plan), and packed into rows of ``max_length`` tokens inside a
micro-batch, or into one row when the model runs segment attention. Every step gets the same number of micro-batches, because Trainer accumulates a fixed
number of forward passes per update; a step with fewer examples than micro-batches gets empty
ones, which cost a one-token forward pass.

The flat list of micro-batches is read by ``StepSampler``: steps stay whole and in the order the
plan gives, shuffled once per epoch unless a curriculum fixes the order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tunelab.data.templates import Encoded

MicroBatch = list[list[Encoded]]  # rows of packed examples


@dataclass
class StepPlan:
    micro_batches: list[MicroBatch]  # step s owns items [s * per_step, (s + 1) * per_step)
    per_step: int
    step_tokens: list[int]  # non-pad tokens of each step, in plan order

    @property
    def steps(self) -> int:
        return len(self.step_tokens)


def _length(example: Encoded) -> int:
    return len(example.input_ids)


def pack_rows(examples: list[Encoded], max_length: int) -> list[list[Encoded]]:
    """First-fit decreasing: each example goes into the first row it fits, longest examples first."""
    rows: list[list[Encoded]] = []
    used: list[int] = []
    for example in sorted(examples, key=_length, reverse=True):
        n = _length(example)
        for r, total in enumerate(used):
            if total + n <= max_length:
                rows[r].append(example)
                used[r] += n
                break
        else:
            rows.append([example])
            used.append(n)
    return rows


def _spread(examples: list[Encoded], bins: int) -> list[list[Encoded]]:
    """Longest first, each example into the micro-batch with the fewest tokens so far."""
    groups: list[list[Encoded]] = [[] for _ in range(bins)]
    loads = [0] * bins
    for example in sorted(examples, key=_length, reverse=True):
        k = loads.index(min(loads))
        groups[k].append(example)
        loads[k] += _length(example)
    return groups


def _fits(group: list[Encoded], capacity: int, max_length: int, packing: bool) -> bool:
    """A micro-batch fits when its rows, padded to the widest, hold at most ``capacity`` tokens."""
    if not group:
        return True
    rows = pack_rows(group, max_length) if packing else [[e] for e in group]
    width = max(sum(_length(e) for e in row) for row in rows)
    return len(rows) * width <= capacity


def plan_steps(examples: list[Encoded], examples_per_step: int, max_length: int, micro_batch_tokens: int,
               packing: bool, one_row: bool = False) -> StepPlan:
    """Group ``examples`` (in the given order) into steps and each step into balanced micro-batches.

    Packed rows hold up to ``max_length`` tokens, or with ``one_row`` (segment attention, where row
    length costs nothing extra) a micro-batch is a single row of up to ``micro_batch_tokens``.
    """
    capacity = max(micro_batch_tokens, max_length)
    row_length = capacity if one_row else max_length
    steps = [examples[i:i + examples_per_step] for i in range(0, len(examples), examples_per_step)]
    per_step = max(1, max(-(-sum(map(_length, step)) // capacity) for step in steps))
    while True:
        spread = [_spread(step, per_step) for step in steps]
        if all(_fits(group, capacity, row_length, packing) for groups in spread for group in groups):
            break
        per_step += 1
    micro_batches = [pack_rows(group, row_length) if packing else [[e] for e in group]
                     for groups in spread for group in groups]
    return StepPlan(micro_batches, per_step, [sum(map(_length, step)) for step in steps])


def epoch_order(steps: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The order of steps in an epoch: a seeded permutation per epoch, or the plan order."""
    order = list(range(steps))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


class StepSampler(torch.utils.data.Sampler):
    """Yields micro-batch indices a whole step at a time, steps in ``epoch_order``."""

    def __init__(self, plan: StepPlan, seed: int, shuffle: bool):
        self.plan, self.seed, self.shuffle, self.epoch = plan, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.micro_batches)

    def __iter__(self):
        for step in epoch_order(self.plan.steps, self.epoch, self.seed, self.shuffle):
            yield from range(step * self.plan.per_step, (step + 1) * self.plan.per_step)


def tokens_by_global_step(plan: StepPlan, epochs: int, seed: int, shuffle: bool) -> list[int]:
    """Non-pad tokens of each optimizer step in the order Trainer runs them, over ``epochs`` epochs."""
    return [plan.step_tokens[s] for epoch in range(epochs) for s in epoch_order(plan.steps, epoch, seed, shuffle)]
