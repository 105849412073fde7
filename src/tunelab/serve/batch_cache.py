"""The running batch's key/value cache: rows join and leave between decode steps.

Every row is left-padded to the batch's width, so all rows end at the same column, where the next
token goes. A joining group (prefilled together) and the running batch are padded to the wider of
the two and stacked; finished rows are dropped, then columns that are padding in every remaining row
are cut from the left, so the cache never grows wider than its longest live row needs.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunelab.errors import TunelabError


class BatchCache:
    """Key/value tensors per layer ([rows, kv heads, columns, head dim]) and the attention mask
    ([rows, columns], 0 on padding)."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise TunelabError("this model's attention (sliding window, linear or quantized cache) is not supported "
                               "by the batching scheduler yet; serve a model with full attention")
        self.cache, self.mask = cache, mask

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def extend_mask(self) -> torch.Tensor:
        """The mask with one more real column for every row (the token being decoded)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask

    def join(self, other: BatchCache) -> None:
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order), then drop columns no remaining row attends to."""
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0]) if mask.any() else mask.shape[1]
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
