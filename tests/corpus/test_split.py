"""Split allocation: deterministic, independent of row order, disjoint, exact sizes, stratified."""
from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gepa_lab.corpus.split import allocate, apportion


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[str], list[str], list[tuple[str, int]], int]:
    n_labels = draw(st.integers(1, 6))
    counts = draw(st.lists(st.integers(1, 25), min_size=n_labels, max_size=n_labels))
    labels = [f"L{i}" for i, c in enumerate(counts) for _ in range(c)]
    ids = [f"row{j}" for j in range(len(labels))]
    n = len(ids)
    test = draw(st.integers(1, max(1, n // 3)))
    val = draw(st.integers(1, max(1, (n - test) // 2)))
    train = draw(st.integers(0, max(0, n - test - val)))
    requests = [("test", test), ("val", val), ("train", train)]
    if sum(s for _, s in requests) > n:
        requests = [("test", 1)]
    return ids, labels, requests, draw(st.integers(0, 2**31))


@settings(max_examples=60, deadline=None, database=None)
@given(datasets(), st.booleans(), st.randoms(use_true_random=False))
def test_allocation_properties(data, stratified: bool, rnd: random.Random) -> None:
    ids, labels, requests, seed = data
    lab = labels if stratified else None
    out = allocate(ids, requests, seed, lab)
    # exact sizes, disjoint
    assert {s: len(v) for s, v in out.items()} == dict(requests)
    flat = [i for v in out.values() for i in v]
    assert len(flat) == len(set(flat))
    # deterministic, and independent of the order the rows arrive in
    assert allocate(ids, requests, seed, lab) == out
    perm = list(range(len(ids)))
    rnd.shuffle(perm)
    out2 = allocate([ids[p] for p in perm], requests, seed, [lab[p] for p in perm] if lab else None)
    assert {s: sorted(ids[perm[i]] for i in v) for s, v in out2.items()} == {s: sorted(ids[i] for i in v) for s, v in out.items()}
    if stratified:
        # every split with room for all labels still available gets each of them
        remaining = Counter(labels)
        for split, size in requests:
            got = Counter(labels[i] for i in out[split])
            avail = [k for k, c in remaining.items() if c > 0]
            if size >= len(avail):
                assert set(got) == set(avail)
            remaining -= got


def test_unstratified_train_is_a_prefix_and_val_test_stay_put() -> None:
    ids = [f"r{i}" for i in range(100)]
    small = allocate(ids, [("test", 20), ("val", 10), ("train", 5)], 7)
    big = allocate(ids, [("test", 20), ("val", 10), ("train", 50)], 7)
    assert small["test"] == big["test"] and small["val"] == big["val"]
    assert big["train"][:5] == small["train"]


def test_apportion_is_proportional_and_capped() -> None:
    q = apportion(10, {"a": 50, "b": 30, "c": 20}, 0, "train")
    assert q == {"a": 5, "b": 3, "c": 2}
    q = apportion(3, {"a": 1, "b": 1, "c": 100}, 0, "val")
    assert q == {"a": 1, "b": 1, "c": 1}
    q = apportion(2, {"a": 10, "b": 10, "c": 10}, 0, "val")
    assert sum(q.values()) == 2 and max(q.values()) == 1
