"""Batch MinHash sketches and bucket-based comparisons: the same answers as datasketch's MinHash and
the incremental LSH index, from compact keys that can live on disk."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from tests.data.dedup_oracle import NearDuplicateIndex
from tunelab.data.dedup import (
    MINHASH_SEED,
    MinHasher,
    SketchFile,
    find_leaks,
    first_near_duplicates,
    shingles,
)

VOCABULARY = [f"w{i}" for i in range(400)]


def corpus(seed: int, n: int) -> list[str]:
    """Random texts (some empty or under five words), half of them edited copies of earlier ones."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.5:
            words = rng.choice(texts).split()
            for _ in range(rng.randint(0, 3)):
                if words:
                    words[rng.randrange(len(words))] = rng.choice(VOCABULARY)
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(VOCABULARY) for _ in range(rng.choice((0, 2, 5, 30, 80, 300)))))
    return texts


def test_signatures_equal_datasketch_minhash():
    texts = corpus(1, 120) + ["", "?!", "One two", "Hello, World! Hello, world"]
    sketches = MinHasher(0.85).sketch(texts)
    permutations = MinHash(num_perm=128, seed=MINHASH_SEED).permutations
    for i, text in enumerate(texts):
        grams = shingles(text)
        assert bool(sketches.has_words[i]) == bool(grams)
        if grams:
            reference = MinHash(num_perm=128, permutations=permutations, scheme="affine32")
            reference.update_batch(grams)
            assert np.array_equal(sketches.signatures[i], reference.hashvalues)
    equal = [(i, j) for i in range(len(texts)) for j in range(i) if shingles(texts[i]) == shingles(texts[j])
             and shingles(texts[i])]
    assert equal and all(sketches.digests()[i] == sketches.digests()[j] for i, j in equal)


@pytest.mark.parametrize("threshold", [0.5, 0.85, 1.0])
def test_first_near_duplicates_answer_like_the_incremental_index(threshold):
    texts = corpus(2, 400)
    index = NearDuplicateIndex(threshold)
    expected = []
    for i, text in enumerate(texts):
        original = index.add(i, text)
        if original is not None:
            expected.append((i, original, index.similarity(original, text)))
    found = first_near_duplicates(MinHasher(threshold).sketch(texts), np.arange(len(texts)), threshold)
    assert found == expected and len(found) > 30


def test_only_the_given_rows_take_part():
    texts = ["a b c d e f g h"] * 4 + ["x y z w v u t s"] * 2
    sketches = MinHasher().sketch(texts)
    assert first_near_duplicates(sketches, np.array([1, 3, 4]), 0.85) == [(3, 1, 1.0)]


@pytest.mark.parametrize("threshold", [0.6, 0.9])
def test_find_leaks_answers_like_the_incremental_index(threshold):
    texts = corpus(3, 500)
    order = random.Random(4).sample(range(len(texts)), len(texts))  # train order is not input order
    train, held_out = order[:350], order[350:]
    index = NearDuplicateIndex(threshold)
    for position, row in enumerate(train):
        index.insert(position, texts[row])
    expected = [(i, match[0]) for i, row in enumerate(held_out) if (match := index.match(texts[row]))]
    leaks = find_leaks(MinHasher(threshold).sketch(texts), np.array(train), np.array(held_out), threshold)
    assert leaks == expected and len(leaks) > 15


def test_identical_train_rows_leak_to_the_first_in_train_order():
    texts = ["the same question asked again and again"] * 50 + ["something else entirely, nothing alike here"]
    sketches = MinHasher().sketch(texts)
    train = np.array([7, 3, 9, *range(10, 50)])
    assert find_leaks(sketches, train, np.array([0, 50, 1]), 0.85) == [(0, 0), (2, 0)]


def test_sketch_file_reads_back_what_was_appended(tmp_path):
    hasher = MinHasher()
    batches = [corpus(5, 40), corpus(6, 25), corpus(7, 1)]
    sketch_file = SketchFile(tmp_path, "rows", cached_signatures=4)
    for texts in batches:
        sketch_file.append(hasher.sketch(texts))
    whole = hasher.sketch([text for texts in batches for text in texts])
    assert len(sketch_file) == len(whole) == 66
    assert np.array_equal(sketch_file.has_words, whole.has_words)
    for band in range(whole.bands):
        assert np.array_equal(sketch_file.band_column(band, rows_per_read=7), whole.band_column(band))
    assert np.array_equal(sketch_file.digests(), whole.digests())
    for row in (0, 39, 40, 65, 0):
        assert np.array_equal(sketch_file.signature(row), whole.signature(row))
    rows = np.arange(len(whole))
    assert first_near_duplicates(sketch_file, rows, 0.85) == first_near_duplicates(whole, rows, 0.85)
    sketch_file.close()


def test_sketch_pairs_equal_separate_sketches():
    contents = corpus(8, 60)
    inputs = [" ".join(text.split()[: len(text.split()) // 2]) for text in contents]  # the first half of each
    hasher = MinHasher()
    content, input_ = hasher.sketch_pairs(contents, inputs)
    for pair, alone in ((content, hasher.sketch(contents)), (input_, hasher.sketch(inputs))):
        assert np.array_equal(pair.signatures, alone.signatures) and np.array_equal(pair.keys, alone.keys)
        assert np.array_equal(pair.has_words, alone.has_words)
