"""Rules v2 statistics: the two-level bootstrap, the seed t-interval, their hull, and the seed count
for the claim-01 non-inferiority test (ersm/metrics/hierarchical.py, ersm/metrics/power.py).

Known answers: degenerate data whose interval is known in closed form or equals an existing
interval, an explicit per-resample loop as the reference for the vectorised draws, coverage on
simulated hierarchical data, and an independent loop (and a Monte Carlo) for the power formulas.
"""
import math
import time

import numpy as np
import pytest
from scipy import stats

from ersm.metrics import hierarchical
from ersm.metrics.hierarchical import (
    interval_hull, mean_of_seed_means, mean_seed_ratio, paired_rule_v2_interval, paired_two_level_bootstrap,
    per_seed_statistics, rule_v2_interval,
    seed_t_interval, two_level_bootstrap,
)
from ersm.metrics.power import noninferiority_power, seeds_for_noninferiority
from ersm.metrics.stats import bootstrap_ci, mean_ci


def width(interval):
    return interval[2] - interval[1]


# ----------------------------------------------------------------------------- degenerate data

def test_identical_seeds_shared_draws_equal_the_image_bootstrap_of_one_seed():
    x = np.random.default_rng(1).normal(size=400)
    values = np.tile(x, (5, 1))
    assert two_level_bootstrap(values) == two_level_bootstrap(values, images="shared"), "rules v2 use shared draws"
    two = two_level_bootstrap(values, images="shared")
    one = bootstrap_ci(x)
    assert two[0] == pytest.approx(one[0], abs=1e-12)
    assert two[1] == pytest.approx(one[1], abs=0.02) and two[2] == pytest.approx(one[2], abs=0.02)
    assert width(two) == pytest.approx(width(one), rel=0.1)


def test_identical_seeds_per_seed_draws_average_the_image_noise_over_seeds():
    # Independent image draws for each of the S drawn seeds average S independent image-bootstrap
    # means: the interval is sqrt(S) times narrower than the image bootstrap of one seed.
    s = 5
    x = np.random.default_rng(1).normal(size=400)
    two = two_level_bootstrap(np.tile(x, (s, 1)), images="per_seed")
    one = bootstrap_ci(x)
    assert two[0] == pytest.approx(one[0], abs=1e-12)
    assert width(two) == pytest.approx(width(one) / math.sqrt(s), rel=0.1)


@pytest.mark.parametrize("images", ["per_seed", "shared"])
def test_constant_images_leave_only_the_seed_bootstrap(images):
    # Each seed's images are constant: the two-level resamples are the seed bootstrap's resamples
    # (the seed draws come first from the same generator), while an image-only bootstrap of the
    # seed-averaged values has zero width.
    c = np.array([0.61, 0.74, 0.58, 0.69, 0.80])
    values = np.repeat(c[:, None], 300, axis=1)
    two = two_level_bootstrap(values, images=images)
    seeds_only = bootstrap_ci(c)
    assert two == pytest.approx(seeds_only, rel=1e-12)
    images_only = bootstrap_ci(values.mean(0))
    assert width(images_only) == 0
    assert width(two) > 0.1


# ----------------------------------------------------------------------------- draws

def loop_reference(arrays, statistic, n_boot, seed, level, images):
    """Per resample and per drawn seed, with the documented draw order, for one chunk of resamples."""
    s, n = arrays[0].shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, s, size=(n_boot, s))
    image_draws = rng.integers(0, n, size=(n_boot, s, n) if images == "per_seed" else (n_boot, 1, n))
    out = []
    for r in range(n_boot):
        resampled = []
        for x in arrays:
            rows = []
            for j in range(s):
                cols = image_draws[r, j] if images == "per_seed" else image_draws[r, 0]
                rows.append([x[seed_draws[r, j], i] for i in cols])
            resampled.append(np.array(rows)[None])
        out.append(statistic(*resampled)[0])
    tail = (1 - level) / 2 * 100
    return np.percentile(out, [tail, 100 - tail])


@pytest.mark.parametrize("images", ["per_seed", "shared"])
def test_vectorised_draws_match_a_loop_over_resamples_and_seeds(images):
    rng = np.random.default_rng(3)
    occluded, clean = rng.random((3, 6)), 0.5 + rng.random((3, 6))
    got = two_level_bootstrap((occluded, clean), statistic=mean_seed_ratio, n_boot=300, seed=4, images=images)
    assert got[1:] == pytest.approx(tuple(loop_reference([occluded, clean], mean_seed_ratio, 300, 4, 0.95, images)),
                                    rel=1e-12)


def test_result_does_not_depend_on_the_chunk_size(monkeypatch):
    values = np.random.default_rng(5).normal(size=(4, 50))
    whole = two_level_bootstrap(values, n_boot=500, seed=2)
    monkeypatch.setattr(hierarchical, "_CHUNK_VALUES", 3 * 4 * 50)  # 3 resamples per chunk
    assert two_level_bootstrap(values, n_boot=500, seed=2) == whole


def test_deterministic_for_a_seed_and_different_across_seeds():
    values = np.random.default_rng(6).random((5, 200)) < 0.7
    first = two_level_bootstrap(values, seed=11)
    assert two_level_bootstrap(values, seed=11) == first
    other = two_level_bootstrap(values, seed=12)
    assert other[0] == first[0] and other[1:] != first[1:]
    b = np.random.default_rng(7).random((5, 200)) < 0.6
    assert paired_two_level_bootstrap(values, b, seed=11) == paired_two_level_bootstrap(values, b, seed=11)
    assert paired_two_level_bootstrap(values, b, seed=11)[1:] != paired_two_level_bootstrap(values, b, seed=12)[1:]


def test_runs_fast_at_the_full_profile_size():
    rng = np.random.default_rng(8)
    a, b = rng.random((5, 1000)) < 0.8, rng.random((5, 1000)) < 0.7
    start = time.perf_counter()
    two_level_bootstrap(a, n_boot=2000)
    paired_two_level_bootstrap(a, b, n_boot=2000)
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------- paired arms

@pytest.mark.parametrize("images", ["per_seed", "shared"])
def test_paired_identical_arms_give_a_zero_width_interval_at_zero(images):
    a = np.random.default_rng(9).normal(size=(5, 100))
    assert paired_two_level_bootstrap(a, a.copy(), images=images) == (0.0, 0.0, 0.0)
    # a shift by a constant survives every resample only if both arms get the same draws
    assert paired_two_level_bootstrap(a + 0.25, a, images=images) == pytest.approx((0.25, 0.25, 0.25), abs=1e-12)


def test_paired_difference_is_the_bootstrap_of_the_difference_for_a_linear_statistic():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(5, 120)), rng.normal(size=(5, 120))
    assert paired_two_level_bootstrap(a, b, seed=3) == pytest.approx(two_level_bootstrap(a - b, seed=3), abs=1e-12)


def test_paired_sign_is_a_minus_b():
    rng = np.random.default_rng(11)
    seed_effect = rng.normal(0, 0.02, size=(5, 1))
    dense = (rng.random((5, 1000)) < 0.70 + seed_effect).astype(float)
    ersm = (rng.random((5, 1000)) < 0.80 + seed_effect).astype(float)
    est, lo, hi = paired_two_level_bootstrap(ersm, dense)
    assert 0 < lo < est < hi and est == pytest.approx(ersm.mean() - dense.mean())
    est, lo, hi = paired_two_level_bootstrap(dense, ersm)
    assert lo < est < hi < 0


# ----------------------------------------------------------------------------- ratio statistic

def test_retained_accuracy_by_hand():
    occluded = np.array([[1, 0, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=float)
    clean = np.array([[1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=float)
    # seed 0: (3/6) / (5/6) = 0.6; seed 1: (3/6) / (6/6) = 0.5; mean 0.55
    np.testing.assert_allclose(per_seed_statistics((occluded, clean), mean_seed_ratio), [0.6, 0.5])
    est, lo, hi = two_level_bootstrap((occluded, clean), statistic=mean_seed_ratio)
    assert est == pytest.approx(0.55) and lo < est < hi
    # occluded <= clean image by image, so a resample's ratio can only lie in [0, 1] if numerator
    # and denominator are drawn together (the loop-reference test pins the interval itself)
    assert 0 <= lo and hi <= 1


def test_retained_accuracy_with_proportional_arms_is_exact_in_every_resample():
    # Occluded = r * clean image by image: every resample's ratio is r only if the numerator and
    # the denominator got the same draws, so the interval has zero width.
    clean = np.random.default_rng(12).random((5, 200)) + 0.1
    ersm = (0.8 * clean, clean)
    dense = (0.5 * clean, clean)
    assert two_level_bootstrap(ersm, statistic=mean_seed_ratio) == pytest.approx((0.8, 0.8, 0.8), rel=1e-12)
    assert paired_two_level_bootstrap(ersm, dense, statistic=mean_seed_ratio) == pytest.approx((0.3, 0.3, 0.3),
                                                                                               rel=1e-12)


def test_ratio_with_a_zero_denominator_is_refused():
    occluded = np.ones((2, 5))
    clean = np.array([[1.0] * 5, [0.0] * 5])
    with pytest.raises(ValueError, match="statistic"):
        two_level_bootstrap((occluded, clean), statistic=mean_seed_ratio)


# ----------------------------------------------------------------------------- coverage

def simulate_coverage(images, crossed, sims=200, s=5, n=200, n_boot=500):
    """Share of simulated datasets (true mean 0) whose interval covers 0: two-level, hull, image-only."""
    rng = np.random.default_rng(2024)
    hits = np.zeros(3)
    for k in range(sims):
        if crossed:  # the same test images for every seed: an image effect every seed shares, no seed effect
            values = rng.normal(0, 1, (1, n)) + rng.normal(0, 1, (s, n))
        else:  # seed effect SD 1, image noise SD 1, independent across seeds
            values = rng.normal(0, 1, (s, 1)) + rng.normal(0, 1, (s, n))
        two = two_level_bootstrap(values, n_boot=n_boot, seed=k, images=images)
        hull = interval_hull(two, seed_t_interval(per_seed_statistics(values)))
        only_images = bootstrap_ci(values.mean(0), n_boot=n_boot, seed=k)
        hits += [iv[1] <= 0 <= iv[2] for iv in (two, hull, only_images)]
    return hits / sims


def test_coverage_on_hierarchical_data():
    two, hull, only_images = simulate_coverage("per_seed", crossed=False)
    # The percentile bootstrap over 5 seeds is known to under-cover (its variance is (S-1)/S of the
    # t-interval's, with a normal rather than a t(4) tail), so the band is loose and below 95%;
    # the hull with the t-interval reaches nominal; the image-only bootstrap ignores seed variance.
    assert 0.80 <= two <= 0.97
    assert 0.92 <= hull <= 1.0
    assert only_images <= 0.3


def test_coverage_when_images_are_crossed_with_seeds():
    # Every seed is scored on the same images, and image effects are shared across seeds. Shared
    # image draws keep that effect at full size; per-seed draws average it over seeds and
    # under-cover, even in the hull with the seed t-interval.
    shared, shared_hull, _ = simulate_coverage("shared", crossed=True)
    per_seed, per_seed_hull, _ = simulate_coverage("per_seed", crossed=True)
    assert 0.9 <= shared <= 1.0 and 0.9 <= shared_hull <= 1.0
    assert per_seed < 0.88 and per_seed_hull < 0.88


# ----------------------------------------------------------------------------- seed t-interval, hull

def test_seed_t_interval_is_mean_ci_and_needs_two_seeds():
    x = [0.71, 0.74, 0.69, 0.77]
    assert seed_t_interval(x) == mean_ci(x)
    with pytest.raises(ValueError, match="per_seed_values"):
        seed_t_interval([0.7])
    with pytest.raises(ValueError, match="per_seed_values"):
        seed_t_interval([0.7, float("nan")])
    with pytest.raises(ValueError, match="per_seed_values"):
        seed_t_interval([[0.7, 0.8]])


def test_per_seed_statistics_and_the_rule_v2_hull():
    rng = np.random.default_rng(13)
    a, b = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
    np.testing.assert_allclose(per_seed_statistics(a), a.mean(1))
    diffs = per_seed_statistics(a) - per_seed_statistics(b)
    two = paired_two_level_bootstrap(a, b)
    t = seed_t_interval(diffs)
    est, lo, hi = interval_hull(two, t)
    assert est == two[0] and lo == min(two[1], t[1]) and hi == max(two[2], t[2])


def test_interval_hull_takes_the_outer_ends():
    assert interval_hull((1.0, 0.5, 1.2), (1.0, 0.7, 1.9)) == (1.0, 0.5, 1.9)
    assert interval_hull((1.0, 0.5, 1.2)) == (1.0, 0.5, 1.2)
    assert interval_hull((0.1 + 0.2, 0.0, 1.0), (0.3, -1.0, 0.5)) == (0.1 + 0.2, -1.0, 1.0)


@pytest.mark.parametrize("intervals, match", [
    (((1.0, float("nan"), 1.2), (1.0, 0.7, 1.9)), r"intervals\[0\].*NaN"),
    (((1.0, 0.5, 1.2), (float("nan"), 0.7, 1.9)), r"intervals\[1\].*NaN"),
    (((1.0, 0.5, float("inf")),), "NaN or inf"),
    (((1.0, 0.5, 1.2), (1.1, 0.7, 1.9)), "estimate"),
    (((1.0, 1.5, 1.2),), "lo > hi"),
    (((1.0, 0.5),), "triple"),
    ((), "at least one"),
])
def test_interval_hull_refuses_bad_intervals(intervals, match):
    with pytest.raises(ValueError, match=match):
        interval_hull(*intervals)


# ----------------------------------------------------------------------------- input checks

@pytest.mark.parametrize("values, match", [
    (np.zeros(10), r"values must be a 2-D \[S, N\] array"),
    (np.zeros((1, 10)), r"values has 1 seed"),
    (np.zeros((3, 1)), r"values has 1 test image"),
    (np.array([[0.0, np.nan], [1.0, 1.0]]), r"values has 1 NaN"),
    ([[0.0, 1.0, 1.0], [1.0, 1.0]], r"values must be an \[S, N\] array"),
    ((np.zeros((3, 4)), np.zeros((3, 5))), r"values\[1\] has shape \(3, 5\), but values\[0\] has \(3, 4\)"),
    ((), "empty tuple"),
])
def test_bad_values_are_refused_by_name(values, match):
    with pytest.raises(ValueError, match=match):
        two_level_bootstrap(values)


def test_bad_arguments_are_refused_by_name():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="a and b must be paired"):
        paired_two_level_bootstrap(x, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="a and b must be paired"):
        paired_two_level_bootstrap((x, x), x)
    with pytest.raises(ValueError, match=r"b has 1 seed"):
        paired_two_level_bootstrap(x, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="images='nested'"):
        two_level_bootstrap(x, images="nested")
    with pytest.raises(ValueError, match="n_boot=0"):
        two_level_bootstrap(x, n_boot=0)
    with pytest.raises(ValueError, match="level=1.5"):
        two_level_bootstrap(x, level=1.5)
    with pytest.raises(ValueError, match="reduce the last two axes"):
        two_level_bootstrap(x, statistic=np.mean)
    with pytest.raises(ValueError, match="reduce the last two axes"):
        per_seed_statistics(x, statistic=np.mean)


def test_a_list_of_per_seed_arrays_is_read_as_rows():
    rows = [np.arange(5.0), np.arange(5.0) + 1, np.arange(5.0) * 2]
    assert two_level_bootstrap(rows) == two_level_bootstrap(np.stack(rows))
    assert mean_of_seed_means(np.stack(rows)[None])[0] == pytest.approx(np.stack(rows).mean())


# ----------------------------------------------------------------------------- power

def seeds_by_loop(sd, margin, power=0.8, alpha=0.025):
    n = 2
    while ((stats.t.ppf(1 - alpha, n - 1) + stats.t.ppf(power, n - 1)) * sd / margin) ** 2 > n:
        n += 1
    return n


def test_seeds_for_the_documented_example():
    normal = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 2.7 / 1.0) ** 2
    assert normal == pytest.approx(57.2, abs=0.05) and math.ceil(normal) == 58
    n = seeds_for_noninferiority(2.7, 1.0)
    assert n == seeds_by_loop(2.7, 1.0) == 60  # t quantiles ask slightly more than the normal 58
    assert noninferiority_power(n, 2.7, 1.0) >= 0.8
    assert noninferiority_power(n - 1, 2.7, 1.0) < 0.8


@pytest.mark.parametrize("sd, margin, power, alpha", [
    (0.3, 1.0, 0.8, 0.025), (1.0, 1.0, 0.8, 0.025), (1.0, 0.5, 0.9, 0.025), (4.0, 1.0, 0.8, 0.05),
])
def test_seeds_match_an_independent_loop_and_reach_the_power(sd, margin, power, alpha):
    n = seeds_for_noninferiority(sd, margin, power=power, alpha=alpha)
    assert n == seeds_by_loop(sd, margin, power, alpha)
    assert noninferiority_power(n, sd, margin, alpha=alpha) >= power


def test_power_matches_a_simulated_t_test():
    n, sd, margin = 10, 1.0, 1.0
    d = np.random.default_rng(14).normal(0.0, sd, size=(20000, n))  # true difference 0
    t = (d.mean(1) + margin) / (d.std(1, ddof=1) / math.sqrt(n))
    rejected = (t > stats.t.ppf(0.975, n - 1)).mean()
    assert noninferiority_power(n, sd, margin) == pytest.approx(rejected, abs=0.01)


def test_seed_count_beyond_max_seeds_is_refused():
    with pytest.raises(ValueError, match="max_seeds=50"):
        seeds_for_noninferiority(2.7, 1.0, max_seeds=50)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sd=0.0), "sd=0.0"), (dict(sd=-1.0), "sd=-1.0"), (dict(sd=float("nan")), "sd=nan"),
    (dict(sd=float("inf")), "sd=inf"), (dict(sd="2"), "sd='2'"), (dict(margin=0.0), "margin=0.0"),
    (dict(margin=-0.5), "margin=-0.5"), (dict(power=1.0), "power=1.0"), (dict(power=0.0), "power=0.0"),
    (dict(alpha=0.5), "alpha=0.5"), (dict(alpha=0.0), "alpha=0.0"), (dict(max_seeds=1), "max_seeds=1"),
])
def test_seeds_bad_input_names_the_argument(kwargs, match):
    args = dict(sd=2.7, margin=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        seeds_for_noninferiority(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), "n=1"), (dict(n=2.5), "n=2.5"), (dict(sd=0.0), "sd=0.0"), (dict(margin=-1.0), "margin=-1.0"),
    (dict(alpha=0.6), "alpha=0.6"), (dict(sd=float("nan")), "sd=nan"),
])
def test_power_bad_input_names_the_argument(kwargs, match):
    args = dict(n=10, sd=1.0, margin=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        noninferiority_power(**args)


# ----------------------------------------------------------------------------- the one-call v2 intervals

def test_rule_v2_intervals_are_the_hull_of_their_parts():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 1.0, size=(3, 40)) + rng.normal(0, 0.5, size=(3, 1))
    b = rng.normal(0.0, 1.0, size=(3, 40))
    boot = paired_two_level_bootstrap(a, b, n_boot=500, seed=1)
    t = seed_t_interval(per_seed_statistics(a) - per_seed_statistics(b))
    assert paired_rule_v2_interval(a, b, n_boot=500, seed=1) == interval_hull(boot, t)
    one = rule_v2_interval(a, n_boot=500, seed=1)
    assert one == interval_hull(two_level_bootstrap(a, n_boot=500, seed=1), seed_t_interval(per_seed_statistics(a)))
    # the hull is never narrower than either part
    est, lo, hi = paired_rule_v2_interval(a, b, n_boot=500, seed=1)
    assert lo <= min(boot[1], t[1]) and hi >= max(boot[2], t[2])


def test_rule_v2_interval_widens_with_seed_variance_the_image_bootstrap_ignores():
    rng = np.random.default_rng(4)
    images = rng.normal(0, 1, size=(1, 200))
    a = images + np.array([[-2.0], [0.0], [2.0]])  # seeds differ a lot, images vary a little
    b = np.zeros_like(a) + rng.normal(0, 1e-3, size=a.shape)
    _, lo, hi = paired_rule_v2_interval(a, b, n_boot=500)
    assert lo < -1.0 and hi > 1.0
