"""Splits: reproducible, a partition of the input, stratified by label, safe on tiny inputs."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.data.records import Record
from tunelab.data.split import content_hash, split_records
from tunelab.errors import DataError, TunelabError


def texts(n: int) -> list[Record]:
    return [Record(kind="text", text=f"doc {i}", source="t.jsonl", line=i + 1) for i in range(n)]


def labeled(counts: dict[str, int]) -> list[Record]:
    records = []
    for label, n in counts.items():
        records += [Record(kind="labeled", text=f"{label} {i}", label=label, line=len(records) + 1)
                    for i in range(n)]
    return records


def lines(records: list[Record]) -> list[int]:
    return [r.line for r in records]


def test_same_seed_same_split_and_a_new_seed_reshuffles():
    records = texts(50)
    first = split_records(records, 0.1, 0.2, seed=7)
    again = split_records(list(records), 0.1, 0.2, seed=7)
    other = split_records(records, 0.1, 0.2, seed=8)
    assert [lines(s) for s in first] == [lines(s) for s in again]
    assert [lines(s) for s in first] != [lines(s) for s in other]


def test_every_record_lands_in_exactly_one_split():
    records = texts(101)
    train, val, test = split_records(records, 0.15, 0.05, seed=1)
    assert (len(train), len(val), len(test)) == (81, 15, 5)
    assert sorted(lines(train) + lines(val) + lines(test)) == lines(records)


def test_labels_are_stratified():
    counts = {"neg": 60, "pos": 30, "rare": 10}
    train, val, test = split_records(labeled(counts), 0.1, 0.2, seed=3)
    for split, fraction in ((val, 0.1), (test, 0.2), (train, 0.7)):
        got = Counter(r.label for r in split)
        for label, n in counts.items():
            assert abs(got[label] - n * fraction) <= 1, (label, got)


def test_stratified_train_is_not_grouped_by_label():
    train, _, _ = split_records(labeled({"a": 50, "b": 50}), 0.1, 0.1, seed=0)
    labels = [r.label for r in train]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_a_label_with_one_record_does_not_break_stratification():
    train, val, test = split_records(labeled({"common": 20, "once": 1}), 0.1, 0.1, seed=0)
    assert len(train) + len(val) + len(test) == 21
    assert sum(r.label == "once" for r in train + val + test) == 1


def test_stratify_off_is_a_plain_shuffle():
    records = labeled({"a": 10, "b": 10})
    assert split_records(records, 0.1, 0.1, 5, stratify=False) != split_records(records, 0.1, 0.1, 5)


@pytest.mark.parametrize(
    "n, val_fraction, test_fraction, sizes",
    [
        (1, 0.0, 0.0, (1, 0, 0)),
        (2, 0.1, 0.0, (1, 1, 0)),
        (2, 0.0, 0.3, (1, 0, 1)),
        (3, 0.1, 0.1, (1, 1, 1)),
        (5, 0.1, 0.1, (3, 1, 1)),
        (4, 0.45, 0.45, (1, 1, 2)),
    ],
)
def test_tiny_inputs_keep_train_and_requested_splits_non_empty(n, val_fraction, test_fraction, sizes):
    splits = split_records(texts(n), val_fraction, test_fraction, seed=0)
    assert tuple(len(s) for s in splits) == sizes


@pytest.mark.parametrize("n, val_fraction, test_fraction", [(0, 0.0, 0.0), (1, 0.1, 0.0), (2, 0.1, 0.1)])
def test_too_few_records_for_the_requested_splits(n, val_fraction, test_fraction):
    with pytest.raises(DataError, match="record"):
        split_records(texts(n), val_fraction, test_fraction, seed=0)


@pytest.mark.parametrize("val_fraction, test_fraction", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions(val_fraction, test_fraction):
    with pytest.raises(TunelabError, match="val_fraction"):
        split_records(texts(10), val_fraction, test_fraction, seed=0)


@settings(max_examples=100, deadline=None, database=None)
@given(
    counts=st.dictionaries(st.sampled_from("abcde"), st.integers(1, 40), min_size=1),
    val_fraction=st.sampled_from([0.0, 0.05, 0.1, 0.25]),
    test_fraction=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 2**32),
)
def test_property_split_is_a_partition_with_the_requested_sizes(counts, val_fraction, test_fraction, seed):
    records = labeled(counts)
    n = len(records)
    if n < 1 + (val_fraction > 0) + (test_fraction > 0):
        return
    train, val, test = split_records(records, val_fraction, test_fraction, seed)
    assert sorted(lines(train) + lines(val) + lines(test)) == lines(records)
    assert train
    for split, fraction in ((val, val_fraction), (test, test_fraction)):
        assert (len(split) > 0) == (fraction > 0)
        if n >= 10:
            assert abs(len(split) - n * fraction) <= 1


def test_content_hash_is_canonical_and_stable():
    assert content_hash([]) == hashlib.sha256(b"").hexdigest()
    assert content_hash([{"a": 1, "b": "é"}]) == hashlib.sha256('{"a":1,"b":"é"}\n'.encode()).hexdigest()
    assert content_hash([{"b": 2, "a": 1}]) == content_hash([{"a": 1, "b": 2}])
    assert content_hash([{"a": 1}, {"a": 2}]) != content_hash([{"a": 2}, {"a": 1}])
    assert content_hash(iter([{"a": 1}])) == content_hash([{"a": 1}])
