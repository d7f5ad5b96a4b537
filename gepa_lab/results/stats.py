"""Bootstrap confidence intervals: the one module that owns the statistics behind every interval gepa_lab shows."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000


def _percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    if values.ndim != 1 or values.size == 0:
        raise ValueError("need a non-empty list of per-example scores")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    picks = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    return values[picks].mean(axis=1)


def bootstrap_ci(scores: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example scores (seeded: the same input gives the same interval)."""
    return _percentile_interval(_resampled_means(np.asarray(scores, dtype=float), resamples, seed), level)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(b - a) over the same examples, resampling example indices (a, b aligned)."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired scores must cover the same examples: {a_arr.size} and {b_arr.size} scores")
    return _percentile_interval(_resampled_means(b_arr - a_arr, resamples, seed), level)


def paired_t_interval(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """mean(b - a) and its Student's t interval, for a few paired runs (sweep seeds) where a bootstrap over so few
    points would be too narrow; no interval (None, None) from a single pair."""
    from scipy import stats

    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.ndim != 1 or a_arr.size == 0 or a_arr.shape != b_arr.shape:
        raise ValueError(f"need the same non-empty number of paired values, got {a_arr.size} and {b_arr.size}")
    diff = b_arr - a_arr
    mean = float(diff.mean())
    if diff.size < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, diff.size - 1) * diff.std(ddof=1) / np.sqrt(diff.size))
    return mean, mean - half, mean + half
