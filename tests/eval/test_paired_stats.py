"""Paired differences, Wilson intervals and the spread over seeds against hand computations."""

import math

import numpy as np
import pytest

from alignlab.eval.stats import (
    Estimate,
    mean_ci,
    paired_difference,
    proportion_ci,
    seed_spread,
    share_of_gap,
    win_rate,
)

T_975 = {2: 4.3026527, 4: 2.7764451, 19: 2.0930241}  # t_{0.975, df}, printed t table
Z_975 = 1.959963985  # normal 0.975 quantile


def test_paired_interval_by_hand():
    model = [0.9, 0.4, 0.7, 0.2, 0.8]
    baseline = [0.6, 0.5, 0.3, 0.1, 0.5]
    d = [0.3, -0.1, 0.4, 0.1, 0.3]  # model - baseline
    mean = sum(d) / 5  # 0.2
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)  # sqrt(0.165 / 4)
    half = T_975[4] * s / math.sqrt(5)
    est = paired_difference(model, baseline)
    assert est.difference.method == "paired t" and est.difference.n == 5
    assert est.difference.mean == pytest.approx(0.2, abs=1e-12)
    assert est.difference.se == pytest.approx(s / math.sqrt(5), rel=1e-12)
    assert est.difference.lower == pytest.approx(mean - half, abs=1e-6)
    assert est.difference.upper == pytest.approx(mean + half, abs=1e-6)
    assert (est.win_rate.wins, est.win_rate.ties, est.win_rate.losses) == (4, 0, 1)
    assert est.model.mean == pytest.approx(0.6) and est.baseline.mean == pytest.approx(0.4)
    assert est.to_dict()["difference"]["mean"] == pytest.approx(0.2)


def _overlap(a: Estimate, b: Estimate) -> bool:
    return a.lower <= b.upper and b.lower <= a.upper


def test_paired_separates_where_unpaired_intervals_overlap():
    """Prompts differ far more than the models do: each prompt's difficulty is in both scores,
    so the unpaired intervals (width ~ the spread of difficulty) overlap, while the per-prompt
    differences (+0.1 ± 0.02) are all positive."""
    baseline = [i / 20 for i in range(20)]  # difficulty 0 .. 0.95, sd ~0.3
    model = [b + 0.1 + 0.02 * (-1) ** i for i, b in enumerate(baseline)]
    est = paired_difference(model, baseline)
    assert _overlap(est.model, est.baseline)
    assert _overlap(mean_ci(model), mean_ci(baseline))
    assert est.difference.lower > 0 and est.bootstrap.lower > 0
    assert est.separated
    # d alternates 0.12, 0.08: mean 0.1, s = 0.02 * sqrt(20 / 19)
    s = 0.02 * math.sqrt(20 / 19)
    assert est.difference.half_width == pytest.approx(T_975[19] * s / math.sqrt(20), rel=1e-6)


def test_neither_paired_nor_unpaired_separates():
    baseline = [i / 20 for i in range(20)]
    model = [b + 0.1 * (-1) ** i for i, b in enumerate(baseline)]  # differences average to 0
    est = paired_difference(model, baseline)
    assert _overlap(est.model, est.baseline)
    assert est.difference.lower < 0 < est.difference.upper
    assert est.bootstrap.lower < 0 < est.bootstrap.upper
    assert not est.separated


def test_constant_and_degenerate_differences():
    same = paired_difference([0.1, 0.5, 0.9], [0.1, 0.5, 0.9])
    assert (same.difference.lower, same.difference.upper) == (0.0, 0.0)
    assert (same.bootstrap.lower, same.bootstrap.upper) == (0.0, 0.0)
    assert not same.separated and same.win_rate.ties == 3
    shifted = paired_difference([0.6, 0.7], [0.5, 0.6])
    assert shifted.difference.lower == pytest.approx(0.1) and shifted.separated
    one = paired_difference([1.0], [0.0])
    assert one.difference.mean == 1.0 and math.isnan(one.difference.lower)
    assert not one.separated and one.to_dict()["bootstrap"]["lower"] is None
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_bootstrap_is_reproducible_and_close_to_t_for_normal_data():
    rng = np.random.default_rng(1)
    baseline = rng.normal(0.3, 0.3, 400)
    model = baseline + rng.normal(0.05, 0.2, 400)
    first = paired_difference(model, baseline, seed=7)
    assert paired_difference(model, baseline, seed=7).bootstrap == first.bootstrap
    assert paired_difference(model, baseline, seed=8).bootstrap != first.bootstrap
    # Monte Carlo error of a bootstrap 2.5% / 97.5% endpoint from B = 9999 resamples of a
    # near-normal statistic: sqrt(p(1-p)/B) / phi(z_p) * SE = 0.0267 SE; the bootstrap's
    # n (not n-1) and z (not t) shift it by 0.4% of the half-width (~0.008 SE). 0.15 SE is
    # five Monte Carlo SDs plus that shift.
    se = first.difference.se
    assert first.bootstrap.lower == pytest.approx(first.difference.lower, abs=0.15 * se)
    assert first.bootstrap.upper == pytest.approx(first.difference.upper, abs=0.15 * se)
    assert first.bootstrap.se == pytest.approx(se, rel=0.05)  # SE of an SD from 9999 draws: 0.7%


def test_wilson_by_hand():
    def wilson(p, n, z=Z_975):
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return center - half, center + half

    for successes, n in ((8, 10), (37, 120), (2.5, 4)):  # scipy's binomtest; the closed form
        est = proportion_ci(successes, n)
        assert (est.lower, est.upper) == pytest.approx(wilson(successes / n, n), abs=1e-9)
    # 8 / 10: center (0.8 + 0.19207) / 1.38415 = 0.71679, half 0.22663
    assert proportion_ci(8, 10).lower == pytest.approx(0.49016, abs=1e-5)


def test_win_rate_with_ties_is_wilson_on_the_half_count():
    est = win_rate([1, 2, 3, 3, 0, 5], [0, 2, 1, 3, 1, 4])  # W T W T L W
    assert (est.wins, est.ties, est.losses) == (3, 2, 1) and est.mean == pytest.approx(4 / 6)
    center = (4 / 6 + Z_975**2 / 12) / (1 + Z_975**2 / 6)
    half = Z_975 / (1 + Z_975**2 / 6) * math.sqrt((4 / 6) * (2 / 6) / 6 + Z_975**2 / 144)
    assert (est.lower, est.upper) == pytest.approx((center - half, center + half), abs=1e-9)


def test_seed_spread_by_hand():
    per_seed = [
        Estimate(0.02, 0.010, 0.000, 0.040, 500, method="paired t"),
        Estimate(0.05, 0.010, 0.030, 0.070, 500, method="paired t"),
        Estimate(0.08, 0.010, 0.060, 0.100, 500, method="paired t"),
    ]
    spread = seed_spread(per_seed)
    # mean 0.05, s = 0.03 (deviations -0.03, 0, +0.03), df = 2
    se = 0.03 / math.sqrt(3)
    assert spread.across_seeds.mean == pytest.approx(0.05)
    assert spread.across_seeds.se == pytest.approx(se)
    assert spread.across_seeds.lower == pytest.approx(0.05 - T_975[2] * se, abs=1e-6)
    assert spread.across_seeds.upper == pytest.approx(0.05 + T_975[2] * se, abs=1e-6)
    assert not spread.separated  # each seed separates; three seeds together do not
    data = spread.to_dict()
    assert data["n_seeds"] == 3 and [e["mean"] for e in data["per_seed"]] == [0.02, 0.05, 0.08]
    lone = seed_spread(per_seed[:1])
    assert math.isnan(lone.across_seeds.lower) and not lone.separated


def test_share_of_gap_by_hand():
    baseline = [0.1, 0.3, 0.2, 0.4]
    reachable = [0.5, 0.7, 0.4, 0.8]  # gaps 0.4, 0.4, 0.2, 0.4: sum 1.4
    model = [0.3, 0.4, 0.3, 0.5]  # gains 0.2, 0.1, 0.1, 0.1: sum 0.5
    est = share_of_gap(model, reachable, baseline)
    assert est.method == "bootstrap" and est.n == 4
    assert est.mean == pytest.approx(0.5 / 1.4, abs=1e-12)
    assert est.lower <= est.mean <= est.upper
    # every item gaining exactly half of its gap: the share is 0.5 with nothing to resample
    exact = share_of_gap([0.2, 0.5], [0.3, 0.7], [0.1, 0.3])
    assert exact.mean == pytest.approx(0.5) and math.isnan(exact.lower)
    with pytest.raises(ValueError, match="same items"):
        share_of_gap([0.1], [0.2, 0.3], [0.0, 0.1])


def test_share_of_gap_interval_matches_the_delta_method():
    """At n = 4000 the bootstrap SE of a ratio of means agrees with the delta method's,
    SE(R) = sd(g - R·d) / (√n · mean(d)) (g: a model's gains, d: the reachable gaps), to
    within the bootstrap's own noise (~1/√(2·9999) relative) plus the O(1/n) bias terms."""
    rng = np.random.default_rng(3)
    n = 4000
    baseline = rng.normal(0.3, 0.4, n)
    reachable = baseline + rng.normal(0.2, 0.3, n)
    model = baseline + 0.5 * (reachable - baseline) + rng.normal(0.0, 0.3, n)
    est = share_of_gap(model, reachable, baseline)
    gains, gaps = model - baseline, reachable - baseline
    ratio = gains.sum() / gaps.sum()
    delta_se = np.std(gains - ratio * gaps, ddof=1) / (math.sqrt(n) * gaps.mean())
    assert est.mean == pytest.approx(ratio, rel=1e-12)
    assert est.se == pytest.approx(delta_se, rel=0.05)
    assert est.lower < 0.5 < est.upper  # the share it was built with
    assert est.upper - est.lower == pytest.approx(2 * Z_975 * delta_se, rel=0.08)
