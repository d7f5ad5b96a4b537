"""Seeded, deterministic (optionally stratified) splits.

Rows are ordered by SHA-256(seed, row id), which depends on neither the raw row order nor any library's RNG.
Splits are drawn one after another from that order (test, then val, then train), so val and test do not move
when only the train size changes, and an unstratified train split of n rows is a prefix of a larger one.

Stratified: each split takes per-label counts from the rows still available: one row per label first when the
split has room for every label (so each label present in train also shows up in val and test where possible),
the rest proportional to what is left of each label, rounded by largest remainder (ties broken by a seeded hash
of the label).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _h(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def order(ids: Sequence[str], seed: int) -> list[int]:
    """Indices of `ids` in seeded hash order."""
    keys = [_h(seed, i) for i in ids]
    return sorted(range(len(ids)), key=lambda j: (keys[j], ids[j]))


def apportion(size: int, counts: dict[str, int], seed: int, split: str) -> dict[str, int]:
    """Split `size` over labels with `counts` rows left: at least one each when size allows, rest proportional.

    Never gives a label more than its count; requires size <= sum(counts).
    """
    labels = [lab for lab, c in counts.items() if c > 0]
    total = sum(counts[lab] for lab in labels)
    if size > total:
        raise ValueError(f"cannot take {size} rows from {total}")
    quota = {lab: 0 for lab in counts}
    cap = {lab: counts[lab] for lab in labels}
    if labels and size >= len(labels):
        for lab in labels:
            quota[lab] = 1
            cap[lab] -= 1
        size -= len(labels)
    rest = sum(cap.values())
    if size and rest:
        remainders = {}
        for lab in labels:
            q, r = divmod(size * cap[lab], rest)
            quota[lab] += q
            remainders[lab] = r
        left = size - sum(divmod(size * cap[lab], rest)[0] for lab in labels)
        ranked = sorted(labels, key=lambda lab: (-remainders[lab], _h(seed, split, lab)))
        for lab in ranked[:left]:
            quota[lab] += 1
    return quota


def allocate(
    ids: Sequence[str],
    requests: Sequence[tuple[str, int]],
    seed: int,
    labels: Sequence[str] | None = None,
) -> dict[str, list[int]]:
    """Draw the requested (split, size) pairs, in order, from rows `ids` (unique); returns row indices per split,
    each in seeded hash order. Stratified by `labels` when given. Sizes must fit: sum(sizes) <= len(ids)."""
    if len(set(ids)) != len(ids):
        raise ValueError("row ids must be unique")
    need = sum(size for _, size in requests)
    if need > len(ids):
        raise ValueError(f"asked for {need} rows, have {len(ids)}")
    ordered = order(ids, seed)
    out: dict[str, list[int]] = {}
    if labels is None:
        start = 0
        for split, size in requests:
            out[split] = ordered[start : start + size]
            start += size
        return out
    rank = {j: r for r, j in enumerate(ordered)}
    queues: dict[str, list[int]] = {}
    for j in ordered:
        queues.setdefault(labels[j], []).append(j)
    taken = {lab: 0 for lab in queues}
    for split, size in requests:
        counts = {lab: len(q) - taken[lab] for lab, q in sorted(queues.items())}
        quota = apportion(size, counts, seed, split)
        rows: list[int] = []
        for lab, k in quota.items():
            rows += queues[lab][taken[lab] : taken[lab] + k]
            taken[lab] += k
        out[split] = sorted(rows, key=rank.__getitem__)
    return out
