"""gepa_lab.results.stats: seeded percentile bootstrap intervals of a mean, and of a paired difference; Student's t
interval of a paired difference over a few runs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gepa_lab.results.stats import bootstrap_ci, paired_bootstrap_ci, paired_t_interval


def test_identical_scores_give_no_gain_and_constant_scores_no_spread():
    scores = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert paired_bootstrap_ci(scores, scores) == (0.0, 0.0)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def test_a_clear_shift_excludes_zero_and_noise_does_not():
    rng = np.random.default_rng(1)
    before = rng.integers(0, 2, 200).astype(float)
    after = np.maximum(before, rng.random(200) < 0.3)  # fixes about 30 % of the misses, breaks nothing
    low, high = paired_bootstrap_ci(before, after)
    assert 0 < low <= (after - before).mean() <= high
    shuffled = rng.permutation(before)  # same accuracy, other examples right: no real gain
    low, high = paired_bootstrap_ci(before, shuffled)
    assert low < 0 < high


def test_known_interval_of_a_mean():
    scores = [1.0] * 50 + [0.0] * 50  # mean 0.5, standard error 0.05: the 95 % interval is about 0.5 +- 0.1
    low, high = bootstrap_ci(scores, resamples=4000)
    assert 0.38 < low < 0.42 and 0.58 < high < 0.62


def test_seeded_and_level_widens_the_interval():
    scores = list(np.random.default_rng(2).random(40))
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)
    narrow, wide = bootstrap_ci(scores, level=0.5), bootstrap_ci(scores, level=0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap_ci([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=60), st.integers(0, 2**31))
def test_interval_holds_the_mean(scores, seed):
    low, high = bootstrap_ci(scores, resamples=1000, seed=seed)
    mean = float(np.mean(scores))
    assert low - 1e-9 <= mean <= high + 1e-9
    zeros = [0.0] * len(scores)
    p_low, p_high = paired_bootstrap_ci(zeros, scores, resamples=1000, seed=seed)
    assert p_low - 1e-9 <= mean <= p_high + 1e-9


def test_the_paired_t_interval_over_a_few_seeds_is_students_and_none_from_one_pair():
    mean, low, high = paired_t_interval([0.5, 0.5, 0.5], [0.51, 0.52, 0.53])
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # t(0.975, 2 dof) · sd / √n
    assert mean == pytest.approx(0.02) and (low, high) == pytest.approx((0.02 - half, 0.02 + half))
    assert paired_t_interval([0.4], [0.5]) == (pytest.approx(0.1), None, None)
    with pytest.raises(ValueError, match="same non-empty number"):
        paired_t_interval([0.4, 0.5], [0.5, 0.6, 0.7])
