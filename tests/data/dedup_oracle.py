"""Test oracles for tunelab.data.dedup, kept out of the package because only the tests use them.

``NearDuplicateIndex`` checks rows one at a time on datasketch's own ``MinHash`` and ``MinHashLSH``
(same seed, scheme, shingles and banding as the package): the batch comparisons
``first_near_duplicates`` and ``find_leaks`` must give exactly its answers. ``cross_split_leaks``
runs ``find_leaks`` on two lists of texts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from datasketch import MinHash, MinHashLSH

from tunelab.data.dedup import (
    _MAX_LSH_THRESHOLD,
    _SCHEME,
    DEFAULT_NUM_PERM,
    DEFAULT_THRESHOLD,
    MINHASH_SEED,
    MinHasher,
    find_leaks,
    shingles,
)
from tunelab.errors import TunelabError


class NearDuplicateIndex:
    """Rows added one at a time, each checked against the rows kept so far.

    ``add`` keeps a row only when it near-duplicates no earlier kept row, so a stream of any length
    can be de-duplicated in one pass. Similarity is the MinHash estimate of the Jaccard similarity
    of two rows' shingle sets, in steps of 1/num_perm.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM):
        if not 0 < threshold <= 1:
            raise TunelabError(f"near-duplicate threshold must be above 0 and at most 1, got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self._lsh = MinHashLSH(threshold=min(threshold, _MAX_LSH_THRESHOLD), num_perm=num_perm)
        self._permutations = MinHash(num_perm=num_perm, seed=MINHASH_SEED).permutations
        self._signatures: dict[Hashable, tuple[int, np.ndarray]] = {}  # key -> (insertion order, hash values)

    def __len__(self) -> int:
        return len(self._signatures)

    def add(self, key: Hashable, text: str) -> Hashable | None:
        """The key of the earlier row that ``text`` near-duplicates, or None after keeping it under
        ``key``. A text with no words is never a duplicate and is not kept."""
        sketch = self._sketch(text)
        if sketch is None:
            return None
        match = self._best_match(sketch)
        if match is None:
            self._insert(key, sketch)
            return None
        return match[0]

    def insert(self, key: Hashable, text: str) -> None:
        """Keep ``text`` under ``key`` without checking it against the rows kept so far."""
        sketch = self._sketch(text)
        if sketch is not None:
            self._insert(key, sketch)

    def match(self, text: str) -> tuple[Hashable, float] | None:
        """(key, similarity) of the kept row most similar to ``text`` at or above the threshold
        (the earliest kept on a tie), or None. Does not keep ``text``."""
        sketch = self._sketch(text)
        return None if sketch is None else self._best_match(sketch)

    def similarity(self, key: Hashable, text: str) -> float:
        """The estimated Jaccard similarity of ``text`` and the kept row ``key``."""
        sketch = self._sketch(text)
        if sketch is None:
            return 0.0
        return float(np.mean(sketch.hashvalues == self._signatures[key][1]))

    def _sketch(self, text: str) -> MinHash | None:
        grams = shingles(text)
        if not grams:
            return None
        sketch = MinHash(num_perm=self.num_perm, permutations=self._permutations, scheme=_SCHEME)
        sketch.update_batch(sorted(grams))
        return sketch

    def _insert(self, key: Hashable, sketch: MinHash) -> None:
        if key in self._signatures:
            raise TunelabError(f"near-duplicate index already holds key {key!r}")
        self._lsh.insert(key, sketch, check_duplication=False)
        self._signatures[key] = (len(self._signatures), sketch.hashvalues)

    def _best_match(self, sketch: MinHash) -> tuple[Hashable, float] | None:
        # LSH candidates come from a set, whose order varies between runs: rank them explicitly.
        scored = []
        for key in self._lsh.query(sketch):
            order, hashvalues = self._signatures[key]
            similarity = float(np.mean(sketch.hashvalues == hashvalues))
            if similarity >= self.threshold:
                scored.append((-similarity, order, key))
        if not scored:
            return None
        negative_similarity, _, key = min(scored, key=lambda item: item[:2])
        return key, -negative_similarity


def cross_split_leaks(
    train_texts: Sequence[str],
    other_texts: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
) -> list[tuple[int, int]]:
    """(other_index, train_index) for each val/test text that near-duplicates a training text,
    in order of other_index; a held-out row that matches such a text leaks it into evaluation."""
    sketches = MinHasher(threshold, num_perm).sketch([*train_texts, *other_texts])
    n = len(train_texts)
    return find_leaks(sketches, np.arange(n), np.arange(n, n + len(other_texts)), threshold)
