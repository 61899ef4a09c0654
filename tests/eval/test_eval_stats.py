"""Statistics against hand-computed values."""

import math

import pytest
import torch

from alignlab.eval.stats import (
    Estimate,
    distinct_n,
    kl_estimate,
    mean_ci,
    proportion_ci,
    win_rate,
)


@pytest.mark.parametrize(
    "df, expected",  # t_{0.975, df} from a printed t table
    [
        (1, 12.7062047),
        (2, 4.3026527),
        (3, 3.1824463),
        (10, 2.2281389),
        (30, 2.0422725),
        (1000, 1.9623391),
    ],
)
def test_mean_ci_t_quantile_table(df, expected):
    values = [float(i % 2) for i in range(df + 1)]  # n = df + 1, any spread
    est = mean_ci(values)
    assert est.half_width / est.se == pytest.approx(expected, abs=1e-6)


def test_mean_ci_by_hand():
    est = mean_ci([1, 2, 3, 4])
    se = math.sqrt(5 / 3) / 2  # s = sqrt(5/3), n = 4
    assert (est.mean, est.n, est.method) == (2.5, 4, "t")
    assert est.se == pytest.approx(se)
    assert est.lower == pytest.approx(2.5 - 3.1824463 * se, abs=1e-6)
    assert est.upper == pytest.approx(2.5 + 3.1824463 * se, abs=1e-6)
    assert est.half_width == pytest.approx(3.1824463 * se, abs=1e-6)
    assert mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0])) == est


def test_mean_ci_clustered():
    est = mean_ci([1, 3, 2, 4], groups=[0, 0, 1, 1])
    # cluster residual sums -1 and +1: SE^2 = 2/1 * 2 / 4^2 = 1/4, df = 1
    assert est.se == pytest.approx(0.5)
    assert est.upper - est.mean == pytest.approx(12.7062047 * 0.5, abs=1e-5)
    singletons = mean_ci([1, 3, 2, 4], groups=[0, 1, 2, 3])
    assert singletons.se == pytest.approx(mean_ci([1, 3, 2, 4]).se)


def test_mean_ci_degenerate():
    one = mean_ci([3.0])
    assert one.mean == 3.0 and math.isnan(one.se) and math.isnan(one.lower)
    assert one.to_dict()["se"] is None and one.to_dict()["mean"] == 3.0
    assert math.isnan(mean_ci([]).mean)
    constant = mean_ci([2.0, 2.0, 2.0])
    assert (constant.se, constant.lower, constant.upper) == (0.0, 2.0, 2.0)
    assert Estimate.from_dict(one.to_dict()).mean == 3.0


def test_wilson_interval():
    est = proportion_ci(8, 10)
    assert est.mean == 0.8 and est.method == "wilson"
    assert est.lower == pytest.approx(0.49016, abs=1e-4)
    assert est.upper == pytest.approx(0.94332, abs=1e-4)
    assert est.se == pytest.approx(math.sqrt(0.8 * 0.2 / 10))
    zero = proportion_ci(0, 10)
    assert zero.lower == 0.0 and zero.upper == pytest.approx(0.27753, abs=1e-4)
    assert proportion_ci(10, 10).upper == 1.0
    with pytest.raises(ValueError):
        proportion_ci(3, 2)


def test_win_rate_ties_count_half():
    est = win_rate([3, 1, 2, 2], [1, 2, 2, 0])
    assert (est.wins, est.ties, est.losses) == (2, 1, 1)
    assert est.mean == 0.625
    assert (est.lower, est.upper) == pytest.approx(
        (proportion_ci(2.5, 4).lower, proportion_ci(2.5, 4).upper)
    )
    all_ties = win_rate([1.0, 2.0], [1.0, 2.0])
    assert all_ties.mean == 0.5 and all_ties.ties == 2
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_distinct_n():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # (a b) x3, (b a), (b c)
    assert distinct_n(["a", ""], 2) == 0.0


def test_kl_estimate_by_hand():
    est = kl_estimate([-1.0, -2.0, -3.0], torch.tensor([-1.5, -2.5, -2.0]))
    assert est.mean == pytest.approx(0.0)  # terms 0.5, 0.5, -1
    assert est.se == pytest.approx(math.sqrt(0.75 / 3))
    assert kl_estimate([-1.0, -2.0], [-1.0, -2.0]).se == 0.0
