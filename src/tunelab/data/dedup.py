"""Near-duplicate detection: MinHash LSH over word 5-gram shingles.

Rows that differ by a few words (a fixed typo, a changed name, an added sentence) inflate a dataset,
and when one lands in training and its twin in val/test the metrics overstate what the model
learned. The permutations are seeded, so the same data gives the same answers on every run.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Sequence

import numpy as np
from datasketch import MinHash, MinHashLSH

from tunelab.errors import TunelabError

DEFAULT_THRESHOLD = 0.85
DEFAULT_NUM_PERM = 128
SHINGLE_WORDS = 5
MINHASH_SEED = 1
_SCHEME = "affine32"
# datasketch cannot band 128 permutations for thresholds near 1; banding as for 0.9 still finds such
# pairs (recall over 0.99 at similarity 0.99), and candidates are filtered at the real threshold.
_MAX_LSH_THRESHOLD = 0.9
_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[bytes]:
    """Overlapping ``size``-word runs of the normalized text (NFKC, case-folded, punctuation
    dropped). A text shorter than ``size`` words is one shingle; one with no words has none."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(words) <= size:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)}


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
    index = NearDuplicateIndex(threshold, num_perm)
    for i, text in enumerate(train_texts):
        index.insert(i, text)
    leaks = []
    for j, text in enumerate(other_texts):
        match = index.match(text)
        if match is not None:
            leaks.append((j, match[0]))
    return leaks
