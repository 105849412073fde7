"""Sentence embeddings from a local encoder, for retrieval, support checks and similarity search.

The embedded ``minilm-l6`` (all-MiniLM-L6-v2) is a sentence-transformers folder; its recipe is
mean pooling over the token states, then L2 normalization. That recipe is three lines of torch, so
plain transformers does it here and the sentence-transformers package is not needed. Vectors are
unit length, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import json

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from tunelab.model_files import resolve_model, tokenizer_options, weights_options

DEFAULT_ENCODER = "minilm-l6"


class SentenceEncoder:
    """A transformers encoder with mean pooling and L2 normalization, loaded once and reused."""

    def __init__(self, model: str = DEFAULT_ENCODER):
        folder = resolve_model(model)
        self.name = model
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **tokenizer_options(folder))
        self.model = AutoModel.from_pretrained(folder, **weights_options(folder)).eval()
        self.max_length = _max_seq_length(folder, self.tokenizer)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32, desc: str = "embedding") -> torch.Tensor:
        """One unit-length fp32 row per text, in input order: shape [len(texts), dim]."""
        vectors = torch.zeros((len(texts), self.model.config.hidden_size))
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths pad less
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=desc, leave=False, disable=len(batches) < 2):
            enc = self.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            states = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors[batch] = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return vectors


def top_k_similar(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool = False,
                  block: int = 1024) -> list[list[tuple[int, float]]]:
    """For each query row, the ``k`` most similar key rows as (index, cosine), best first.

    Works in blocks of query rows so the full similarity matrix never has to exist at once.
    ``exclude_self`` (queries are the keys) leaves each row out of its own neighbours.
    """
    k = min(k, keys.shape[0] - (1 if exclude_self else 0))
    if k <= 0:
        return [[] for _ in range(queries.shape[0])]
    results: list[list[tuple[int, float]]] = []
    for start in range(0, queries.shape[0], block):
        sims = queries[start:start + block] @ keys.T
        if exclude_self:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = float("-inf")
        scores, indices = sims.topk(k, dim=1)
        results += [[(int(i), float(s)) for i, s in zip(idx, sc)] for idx, sc in zip(indices, scores)]
    return results


def _max_seq_length(folder, tokenizer) -> int:
    """The length the encoder was trained for (sentence-transformers records it), else the tokenizer's."""
    config = folder / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
    return min(int(tokenizer.model_max_length), 512)
