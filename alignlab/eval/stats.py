"""Estimates with confidence intervals: means, proportions, win rates, diversity, KL.

- `mean_ci`: Student-t interval, mean ± t_{(1+c)/2, df} · SE with SE = s / √n and df = n - 1
  (exact for normal data, the usual large-sample approximation otherwise). With `groups`
  (e.g. several samples per prompt) the SE is cluster-robust and df = #groups - 1.
- `proportion_ci`: Wilson score interval (Wilson 1927), sensible at 0 and n successes.
- `win_rate`: wins + ½ ties over n pairs, Wilson interval (conservative with ties).
- `kl_estimate`: Monte Carlo KL(π || π_ref) from samples of π (the k1 estimator of
  `alignlab.rl.kl` at the sequence level), with a t interval.

No scipy: the t quantile is computed here (exact CDF for integer df, bisection).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import torch


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and a `confidence` interval [lower, upper].

    NaN where undefined (no data; SE and interval with fewer than two observations).
    """

    mean: float
    se: float
    lower: float
    upper: float
    n: int
    confidence: float = 0.95
    method: str = "t"
    """"t" (Student-t interval of a mean) or "wilson" (Wilson interval of a proportion)."""

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: NaN and infinities become None."""
        return {key: _json_number(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        names = {f.name for f in fields(cls)}
        values = {k: (math.nan if v is None else v) for k, v in data.items() if k in names}
        return cls(**values)


@dataclass(frozen=True)
class WinRate(Estimate):
    """A win rate (wins + ½ ties) / n with the counts behind it."""

    wins: int = 0
    ties: int = 0
    losses: int = 0


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _floats(values: Iterable[float] | torch.Tensor) -> list[float]:
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.detach().double().flatten().cpu().tolist()]
    return [float(v) for v in values]


def _nan_estimate(n: int, confidence: float, method: str) -> Estimate:
    return Estimate(math.nan, math.nan, math.nan, math.nan, n, confidence, method)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _t_cdf_abs(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df > 0, t >= 0 (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df - 1, 2):
            term *= (k - 1) / k * c2
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for k in range(3, df - 1, 2):
        term *= (k - 1) / k * c2
        total += term
    return 2 / math.pi * (theta + s * total)


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (integer df >= 1).

    Exact CDF and bisection for df <= 300; beyond, the Cornish-Fisher expansion around the
    normal quantile (error < 1e-9 there).
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    if df > 300:
        z = NormalDist().inv_cdf(p)
        v = float(df)
        return (
            z
            + (z**3 + z) / (4 * v)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        )
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while _t_cdf_abs(hi, df) < target:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf_abs(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2


def mean_ci(
    values: Iterable[float] | torch.Tensor,
    confidence: float = 0.95,
    groups: Sequence[Hashable] | None = None,
) -> Estimate:
    """Mean with a Student-t confidence interval.

    SE = s / √n (s the sample standard deviation), df = n - 1. With `groups` (one label per
    value, e.g. the prompt of each sample) the SE is the cluster-robust one,
    SE² = G/(G-1) · Σ_g (Σ_{i∈g} (x_i - x̄))² / n², with df = G - 1; for singleton groups it
    equals s / √n.
    """
    _check_confidence(confidence)
    xs = _floats(values)
    n = len(xs)
    if n == 0:
        return _nan_estimate(0, confidence, "t")
    mean = math.fsum(xs) / n
    if groups is None:
        df = n - 1
        var = math.fsum((x - mean) ** 2 for x in xs) / df if df > 0 else math.nan
        se = math.sqrt(var / n) if df > 0 else math.nan
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group labels for {n} values")
        residuals: dict[Hashable, float] = {}
        for x, g in zip(xs, groups):
            residuals[g] = residuals.get(g, 0.0) + (x - mean)
        n_groups = len(residuals)
        df = n_groups - 1
        if df > 0:
            total = math.fsum(r * r for r in residuals.values())
            se = math.sqrt(n_groups / df * total) / n
        else:
            se = math.nan
    if df < 1 or math.isnan(se):
        return Estimate(mean, math.nan, math.nan, math.nan, n, confidence, "t")
    half = t_quantile((1 + confidence) / 2, df) * se
    return Estimate(mean, se, mean - half, mean + half, n, confidence, "t")


def proportion_ci(successes: float, n: int, confidence: float = 0.95) -> Estimate:
    """successes / n with the Wilson score interval; SE is the binomial √(p(1-p)/n).

    `successes` may be fractional (e.g. ties counted as half a win).
    """
    _check_confidence(confidence)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return _nan_estimate(0, confidence, "wilson")
    p = successes / n
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    se = math.sqrt(p * (1 - p) / n)
    lower = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends
    upper = 1.0 if successes == n else min(1.0, center + half)
    return Estimate(p, se, lower, upper, n, confidence, "wilson")


def win_rate(
    a_scores: Iterable[float] | torch.Tensor,
    b_scores: Iterable[float] | torch.Tensor,
    confidence: float = 0.95,
) -> WinRate:
    """How often a beats b on paired scores: (wins + ½ ties) / n, with a Wilson interval.

    The Wilson interval treats each pair as a Bernoulli trial; a tie (½) varies less than a
    win or loss, so with ties the interval is conservative.
    """
    a, b = _floats(a_scores), _floats(b_scores)
    if len(a) != len(b):
        raise ValueError(f"win_rate needs paired scores, got {len(a)} and {len(b)}")
    wins = sum(x > y for x, y in zip(a, b))
    ties = sum(x == y for x, y in zip(a, b))
    losses = len(a) - wins - ties
    base = proportion_ci(wins + 0.5 * ties, len(a), confidence)
    return WinRate(**asdict(base), wins=wins, ties=ties, losses=losses)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / total n-grams over whitespace tokens, pooled over all texts
    (Li et al. 2016, "distinct-n"); 0 when there is no n-gram."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = text.split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def kl_estimate(
    policy_logps: Iterable[float] | torch.Tensor,
    ref_logps: Iterable[float] | torch.Tensor,
    confidence: float = 0.95,
    groups: Sequence[Hashable] | None = None,
) -> Estimate:
    """Monte Carlo KL(π || π_ref) = E_{y~π}[log π(y|x) - log π_ref(y|x)] with its SE.

    `policy_logps[i]`, `ref_logps[i]`: sequence log-probs of sample i, drawn from π (exactly:
    temperature 1, top_p 1), under π and π_ref. Unbiased; a single term can be negative.
    `groups` as in `mean_ci` (several samples per prompt).
    """
    p, q = _floats(policy_logps), _floats(ref_logps)
    if len(p) != len(q):
        raise ValueError(f"kl_estimate needs paired log-probs, got {len(p)} and {len(q)}")
    return mean_ci([x - y for x, y in zip(p, q)], confidence, groups)
