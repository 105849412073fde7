"""Near-duplicate detection: MinHash LSH over word 5-gram shingles.

Rows that differ by a few words (a fixed typo, a changed name, an added sentence) inflate a dataset,
and when one lands in training and its twin in val/test the metrics overstate what the model
learned. The permutations are seeded, so the same data gives the same answers on every run.

``MinHasher`` sketches rows in batches (the same signatures as datasketch's ``MinHash``, computed
for many rows in one numpy pass) into compact band keys, and ``first_near_duplicates`` and
``find_leaks`` compare only the rows that share an LSH bucket. Those keep a few integers per row in
memory (an index of the whole input as Python sets would take hundreds of bytes per row per band);
the signatures themselves can live on disk (``SketchFile``).
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32

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


_UINT32_MAX = np.iinfo(np.uint32).max
_CHUNK_SHINGLES = 1 << 14  # shingles per numpy block: 16k x 128 permutations x 4 bytes = 8 MiB
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_MIX_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_MIX_SHIFT = np.uint64(29)


@functools.lru_cache(maxsize=8)
def lsh_bands(threshold: float, num_perm: int = DEFAULT_NUM_PERM) -> tuple[tuple[int, int], ...]:
    """The (start, end) permutation ranges of datasketch's LSH bands for ``threshold``: its choice of
    bands and rows per band that balances missed pairs against needless comparisons."""
    return tuple(MinHashLSH(threshold=min(threshold, _MAX_LSH_THRESHOLD), num_perm=num_perm).hashranges)


class SketchSource(Protocol):
    """What the batch comparisons read: per-row LSH band keys, signature digests and signatures."""

    has_words: np.ndarray  # [rows] bool: rows without words are never compared
    bands: int

    def band_column(self, band: int) -> np.ndarray: ...  # [rows] uint64

    def digests(self) -> np.ndarray: ...  # [rows] uint64, equal for equal signatures

    def signature(self, row: int) -> np.ndarray: ...  # [num_perm] uint32


@dataclass
class Sketches:
    """MinHash signatures of a batch of texts, with one key per LSH band and a digest of each signature."""

    signatures: np.ndarray  # [rows, num_perm] uint32
    keys: np.ndarray  # [rows, bands + 1] uint64: the band keys, then the digest
    has_words: np.ndarray  # [rows] bool

    def __len__(self) -> int:
        return len(self.signatures)

    @property
    def bands(self) -> int:
        return self.keys.shape[1] - 1

    def band_column(self, band: int) -> np.ndarray:
        return self.keys[:, band]

    def digests(self) -> np.ndarray:
        return self.keys[:, -1]

    def signature(self, row: int) -> np.ndarray:
        return self.signatures[row]


class MinHasher:
    """Signatures of many texts at once, equal to datasketch's ``MinHash`` (same seed, scheme and hash
    function) of each text's shingles, with their LSH band keys for ``threshold``."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM):
        if not 0 < threshold <= 1:
            raise TunelabError(f"near-duplicate threshold must be above 0 and at most 1, got {threshold}")
        self.num_perm = num_perm
        self.band_ranges = lsh_bands(threshold, num_perm)
        self._a, self._b = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=_SCHEME).permutations

    def sketch(self, texts: Sequence[str]) -> Sketches:
        hashes, counts = array("I"), np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            grams = shingles(text)
            counts[i] = len(grams)
            hashes.extend(map(sha1_hash32, grams))
        return self._sketches(hashes, counts)

    def sketch_pairs(self, contents: Sequence[str], inputs: Sequence[str]) -> tuple[Sketches, Sketches]:
        """Sketches of ``contents`` and of ``inputs``, where each input repeats much of its content (a
        chat's user turns): the shingles they share are hashed once, which saves a third of the work."""
        content_hashes, content_counts = array("I"), np.zeros(len(contents), dtype=np.int64)
        input_hashes, input_counts = array("I"), np.zeros(len(inputs), dtype=np.int64)
        for i, (content, text) in enumerate(zip(contents, inputs, strict=True)):
            grams = shingles(content)
            hashes = list(map(sha1_hash32, grams))
            content_counts[i] = len(grams)
            content_hashes.extend(hashes)
            known = dict(zip(grams, hashes))
            grams = shingles(text)
            input_counts[i] = len(grams)
            input_hashes.extend([known[g] if g in known else sha1_hash32(g) for g in grams])
        return self._sketches(content_hashes, content_counts), self._sketches(input_hashes, input_counts)

    def _sketches(self, hashes: array, counts: np.ndarray) -> Sketches:
        """Signatures from the shingle hashes of each text, ``counts[i]`` of them for text i, in order."""
        signatures = np.full((len(counts), self.num_perm), _UINT32_MAX, dtype=np.uint32)
        values = _fmix32(np.frombuffer(hashes, dtype=np.uint32))
        ends = np.cumsum(counts)
        starts = ends - counts
        rows = np.flatnonzero(counts)
        i = 0
        while i < len(rows):  # min over each row's shingles, for a block of rows per numpy call
            begin = starts[rows[i]]
            j = max(i + 1, int(np.searchsorted(ends[rows], begin + _CHUNK_SHINGLES, side="right")))
            block = rows[i:j]
            # [num_perm, shingles]: the min runs along contiguous memory, five times faster than across it
            permuted = self._a[:, None] * values[None, begin:ends[block[-1]]] + self._b[:, None]  # wraps mod 2^32
            signatures[block] = np.minimum.reduceat(permuted, starts[block] - begin, axis=1).T
            i = j
        return Sketches(signatures, self._keys(signatures), counts > 0)

    def _keys(self, signatures: np.ndarray) -> np.ndarray:
        keys = np.empty((len(signatures), len(self.band_ranges) + 1), dtype=np.uint64)
        wide = signatures.astype(np.uint64)
        for band, (start, end) in enumerate(self.band_ranges):
            keys[:, band] = _mix(wide[:, start:end], band)
        keys[:, -1] = _mix(wide, len(self.band_ranges))
        return keys


def _fmix32(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 finalizer datasketch applies to each hash before its permutations."""
    shift1, multiplier1, shift2, multiplier2 = _FMIX32
    values = values ^ (values >> shift1)
    values = values * multiplier1
    values = values ^ (values >> shift2)
    values = values * multiplier2
    return values ^ (values >> shift1)


def _mix(columns: np.ndarray, salt: int) -> np.ndarray:
    """A 64-bit key per row of ``columns``; equal rows get equal keys, unequal ones almost never do
    (a rare collision only adds a candidate that the full comparison then turns away)."""
    key = np.full(len(columns), salt + 1, dtype=np.uint64) * _MIX_MULTIPLIER
    for column in columns.T:
        key ^= column
        key *= _MIX_MULTIPLIER
        key ^= key >> _MIX_SHIFT
    return key


class SketchFile:
    """Sketches appended batch by batch to two files in ``folder``; only one byte per row stays in
    memory. Reading a band column streams the key file; a signature is read back by offset."""

    def __init__(self, folder: Path, name: str, num_perm: int = DEFAULT_NUM_PERM,
                 cached_signatures: int = 1 << 14):
        self.num_perm = num_perm
        self.bands = -1
        self._signatures = open(Path(folder) / f"{name}.signatures", "w+b")  # noqa: SIM115 - closed in close()
        self._keys = open(Path(folder) / f"{name}.keys", "w+b")  # noqa: SIM115
        self._has_words = bytearray()
        self._finished: np.ndarray | None = None
        self.signature = functools.lru_cache(maxsize=cached_signatures)(self._read_signature)

    def __len__(self) -> int:
        return len(self._has_words)

    def append(self, sketches: Sketches) -> None:
        self.bands = sketches.bands
        self._signatures.write(sketches.signatures.tobytes())
        self._keys.write(sketches.keys.tobytes())
        self._has_words += sketches.has_words.astype(np.uint8).tobytes()

    @property
    def has_words(self) -> np.ndarray:
        if self._finished is None:
            self._signatures.flush()
            self._keys.flush()
            self._finished = np.frombuffer(bytes(self._has_words), dtype=np.uint8).astype(bool)
        return self._finished

    def band_column(self, band: int, rows_per_read: int = 1 << 16) -> np.ndarray:
        self.has_words  # noqa: B018 - flushes the files
        width = self.bands + 1
        column = np.empty(len(self), dtype=np.uint64)
        for start in range(0, len(self), rows_per_read):
            count = min(rows_per_read, len(self) - start)
            data = os.pread(self._keys.fileno(), count * width * 8, start * width * 8)
            column[start:start + count] = np.frombuffer(data, dtype=np.uint64).reshape(count, width)[:, band]
        return column

    def digests(self) -> np.ndarray:
        return self.band_column(self.bands)

    def _read_signature(self, row: int) -> np.ndarray:
        size = self.num_perm * 4
        return np.frombuffer(os.pread(self._signatures.fileno(), size, row * size), dtype=np.uint32)

    def close(self) -> None:
        self._signatures.close()
        self._keys.close()


def first_near_duplicates(
    sketches: SketchSource, rows: np.ndarray, threshold: float
) -> list[tuple[int, int, float]]:
    """(row, kept_row, similarity) for each of ``rows`` (in ascending order) that near-duplicates an
    earlier row that was kept; a row is kept unless it is listed: the most similar kept row at or
    above ``threshold``, the earliest one on a tie, as if the rows were added to an LSH index one at
    a time. Only rows that share an LSH bucket are compared."""
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[sketches.has_words[rows]]
    entry_rows, entry_buckets = _shared_buckets(sketches, rows)
    order = np.lexsort((entry_buckets, entry_rows))
    entry_rows, entry_buckets = entry_rows[order].tolist(), entry_buckets[order].tolist()
    kept_in_bucket: dict[int, list[int]] = {}
    found = []
    start = 0
    while start < len(entry_rows):
        row, end = entry_rows[start], start + 1
        while end < len(entry_rows) and entry_rows[end] == row:
            end += 1
        buckets = entry_buckets[start:end]
        candidates = {kept for bucket in buckets for kept in kept_in_bucket.get(bucket, ())}
        match = _best_match(sketches, sketches.signature(row), ((c, c) for c in candidates), threshold)
        if match is None:
            for bucket in buckets:
                kept_in_bucket.setdefault(bucket, []).append(row)
        else:
            found.append((row, *match))
        start = end
    return found


def _shared_buckets(sketches: SketchSource, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, bucket) for every row in a bucket with another of ``rows``, buckets numbered across bands;
    rows alone in all their buckets (most rows) can match nothing and are left out."""
    entry_rows, entry_buckets, numbered = [], [], 0
    for band in range(sketches.bands):
        keys, inverse, counts = np.unique(sketches.band_column(band)[rows], return_inverse=True,
                                          return_counts=True)
        shared = counts[inverse] > 1
        entry_rows.append(rows[shared])
        entry_buckets.append(inverse[shared] + numbered)
        numbered += len(keys)
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate([empty, *entry_rows]), np.concatenate([empty, *entry_buckets])


def find_leaks(
    sketches: SketchSource, train_rows: np.ndarray, held_out_rows: np.ndarray, threshold: float
) -> list[tuple[int, int]]:
    """(held_out_index, train_index) for each held-out row that near-duplicates a train row, in
    held-out order: the most similar train row at or above ``threshold``, the earliest in train
    order on a tie (indexes are positions in ``held_out_rows`` and ``train_rows``)."""
    train_rows = np.asarray(train_rows, dtype=np.int64)
    held_out_rows = np.asarray(held_out_rows, dtype=np.int64)
    digests = sketches.digests()
    train_positions = np.flatnonzero(sketches.has_words[train_rows])
    # Train rows with equal signatures are equally similar to anything: only the first can be the answer.
    _, first = np.unique(digests[train_rows[train_positions]], return_index=True)
    train_positions = np.sort(train_positions[first])
    held_indexes = np.flatnonzero(sketches.has_words[held_out_rows])
    train_in_bucket: dict[tuple[int, int], list[int]] = {}
    held_buckets: dict[int, list[tuple[int, int]]] = {}
    for band in range(sketches.bands):
        column = sketches.band_column(band)
        train_keys, held_keys = column[train_rows[train_positions]], column[held_out_rows[held_indexes]]
        common = np.intersect1d(train_keys, held_keys)
        if not len(common):
            continue
        in_common = np.isin(train_keys, common)
        for key, position in zip(train_keys[in_common].tolist(), train_positions[in_common].tolist()):
            train_in_bucket.setdefault((band, key), []).append(position)
        in_common = np.isin(held_keys, common)
        for key, index in zip(held_keys[in_common].tolist(), held_indexes[in_common].tolist()):
            held_buckets.setdefault(index, []).append((band, key))
    leaks = []
    answers: dict[int, tuple[int, float] | None] = {}  # equal signatures get equal answers
    for index in sorted(held_buckets):
        row = int(held_out_rows[index])
        digest = int(digests[row])
        if digest not in answers:
            positions = {p for bucket in held_buckets[index] for p in train_in_bucket[bucket]}
            candidates = ((p, int(train_rows[p])) for p in positions)
            answers[digest] = _best_match(sketches, sketches.signature(row), candidates, threshold)
        if answers[digest] is not None:
            leaks.append((index, answers[digest][0]))
    return leaks


def _best_match(
    sketches: SketchSource, signature: np.ndarray, candidates: Iterable[tuple[int, int]], threshold: float
) -> tuple[int, float] | None:
    """(rank, similarity) of the (rank, row) candidate most similar to ``signature`` at or above
    ``threshold``, the lowest rank on a tie; None when none reaches it."""
    best: tuple[float, int] | None = None  # (-similarity, rank)
    for rank, row in candidates:
        similarity = float(np.count_nonzero(signature == sketches.signature(row))) / len(signature)
        if similarity >= threshold and (best is None or (-similarity, rank) < best):
            best = (-similarity, rank)
    return None if best is None else (best[1], -best[0])
