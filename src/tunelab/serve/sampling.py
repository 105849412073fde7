"""Picking each row's next token: greedy or sampled (temperature, top-p, seed), under a grammar, with
log-probs.

Every row of a batch carries its own settings, so requests with different parameters share one
forward pass. Greedy rows (temperature 0) take the arg-max, as ``tunelab eval`` does; a sampled row
with a ``seed`` draws from its own generator, so the same request gives the same answer whatever
else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this, a temperature means greedy decoding (as OpenAI's and vLLM's servers treat 0).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Sampling:
    """One choice's decoding settings (validated by the request schemas)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class TokenChoice:
    token: int
    logprob: float | None = None  # the model's log-prob of the token (before temperature, top-p or grammar)
    top: list[tuple[int, float]] | None = None  # the most likely tokens with their log-probs


def generator_for(sampling: Sampling, index: int) -> torch.Generator | None:
    """A seeded request's own random stream; choice ``index`` of ``n`` gets its own seed from it."""
    if sampling.seed is None or sampling.greedy:
        return None
    seed = sampling.seed * 1_000_003 + index
    if not -2 ** 63 <= seed < 2 ** 63:  # torch takes a 64-bit seed; any integer is a valid request's seed
        seed %= 2 ** 63
    return torch.Generator().manual_seed(seed)


def choose(logits: torch.Tensor, settings: list[Sampling], generators: list[torch.Generator | None],
           allowed: list[torch.Tensor | None]) -> list[TokenChoice]:
    """The next token of every row of ``logits`` ([rows, vocab], the last position's)."""
    logits = logits.float()
    masked = logits
    if any(a is not None for a in allowed):
        masked = logits.clone()
        for row, mask in enumerate(allowed):
            if mask is not None:
                masked[row].masked_fill_(~mask, float("-inf"))
    greedy = masked.argmax(dim=-1).tolist()
    logprobs = torch.log_softmax(logits, dim=-1) if any(s.logprobs for s in settings) else None
    choices = []
    for row, sampling in enumerate(settings):
        token = greedy[row] if sampling.greedy else _sample(masked[row], sampling, generators[row])
        choice = TokenChoice(token)
        if sampling.logprobs:
            choice.logprob = float(logprobs[row, token])
            if sampling.top_logprobs:
                values, ids = logprobs[row].topk(sampling.top_logprobs)
                choice.top = list(zip(ids.tolist(), values.tolist()))
        choices.append(choice)
    return choices


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        probs = _top_p(probs, sampling.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest set of most likely tokens whose probability reaches ``top_p`` (the most likely token
    always stays), renormalized."""
    ordered, order = probs.sort(descending=True)
    before = ordered.cumsum(0) - ordered  # mass of the tokens ranked above each one
    drop = before >= top_p  # a top_p below float32's range reads as 0 here, and 0 >= 0: keep the first anyway
    drop[0] = False
    ordered[drop] = 0.0
    kept = torch.zeros_like(probs).scatter_(0, order, ordered)
    return kept / kept.sum()
