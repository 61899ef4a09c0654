"""Estimates with confidence intervals: means, proportions, win rates, paired differences,
the spread over training seeds, diversity, KL.

- `mean_ci`: Student-t interval, mean ± t_{(1+c)/2, df} · SE with SE = s / √n and df = n - 1
  (exact for normal data, the usual large-sample approximation otherwise). With `groups`
  (e.g. several samples per prompt) the SE is cluster-robust and df = #groups - 1.
- `proportion_ci`: Wilson score interval (Wilson 1927), sensible at 0 and n successes.
- `win_rate`: wins + ½ ties over n pairs, Wilson interval on that fractional count.
- `paired_difference`: a model against a baseline on the same items (prompts): the mean
  per-item difference with a paired t interval and a paired bootstrap interval, the win rate,
  and the unpaired means beside them; `separated` when both intervals exclude 0.
- `share_of_gap`: how much of the gap from a baseline to a reachable model a model covers on
  the same items (a method's gain over SFT as a share of oracle-SFT's), with a paired
  bootstrap interval.
- `seed_spread`: per-seed paired differences (one per training seed) combined into their
  mean with a t interval over seeds, the per-seed values kept.
- `kl_estimate`: Monte Carlo KL(π || π_ref) from samples of π (the k1 estimator of
  `alignlab.rl.kl` at the sequence level), with a t interval.

Distributions, tests and the bootstrap are scipy.stats' (`t.ppf`, `ttest_rel`, `bootstrap`,
`binomtest(...).proportion_ci`); what is ours is which of them an evaluation reports.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import stats


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
    """"t" (Student-t interval of a mean), "wilson" (Wilson interval of a proportion),
    "paired t" or "bootstrap" (a paired difference, see `paired_difference`)."""

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
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    return Estimate(mean, se, mean - half, mean + half, n, confidence, "t")


def proportion_ci(successes: float, n: int, confidence: float = 0.95) -> Estimate:
    """successes / n with the Wilson score interval (Wilson 1927); SE is the binomial
    √(p(1-p)/n).

    Wilson: center (p + z²/2n) / (1 + z²/n), half-width z / (1 + z²/n) · √(p(1-p)/n + z²/4n²),
    z the normal (1+c)/2 quantile. An integer count goes to scipy's
    `binomtest(k, n).proportion_ci(method="wilson")`; a fractional one (ties counted as half a
    win, see `win_rate`) takes the same formula at the fractional p, since binomtest accepts
    only integers.
    """
    _check_confidence(confidence)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return _nan_estimate(0, confidence, "wilson")
    p = successes / n
    se = math.sqrt(p * (1 - p) / n)
    if float(successes).is_integer():
        interval = stats.binomtest(int(successes), n).proportion_ci(confidence, method="wilson")
        lower, upper = float(interval.low), float(interval.high)
    else:
        z = float(stats.norm.ppf((1 + confidence) / 2))
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lower, upper = center - half, center + half
    lower = 0.0 if successes == 0 else max(0.0, lower)  # exact at the ends
    upper = 1.0 if successes == n else min(1.0, upper)
    return Estimate(p, se, lower, upper, n, confidence, "wilson")


def win_rate(
    a_scores: Iterable[float] | torch.Tensor,
    b_scores: Iterable[float] | torch.Tensor,
    confidence: float = 0.95,
) -> WinRate:
    """How often a beats b on paired scores: (wins + ½ ties) / n, with a Wilson interval.

    Ties count half a win, and the interval is Wilson's formula at that fractional count
    (`proportion_ci`): it treats each pair as a Bernoulli trial, but a tie (½) varies less
    than a win or a loss, so with ties the interval is conservative (too wide, never too
    narrow).
    """
    a, b = _floats(a_scores), _floats(b_scores)
    if len(a) != len(b):
        raise ValueError(f"win_rate needs paired scores, got {len(a)} and {len(b)}")
    wins = sum(x > y for x, y in zip(a, b))
    ties = sum(x == y for x, y in zip(a, b))
    losses = len(a) - wins - ties
    base = proportion_ci(wins + 0.5 * ties, len(a), confidence)
    return WinRate(**asdict(base), wins=wins, ties=ties, losses=losses)


@dataclass(frozen=True)
class PairedDifference:
    """A model against a baseline on the same items; see `paired_difference`."""

    difference: Estimate
    """Mean of the per-item differences a_i - b_i with the paired t interval ("paired t")."""
    bootstrap: Estimate
    """The same mean with the paired bootstrap's interval and SE ("bootstrap")."""
    win_rate: WinRate
    """Items where a > b, ties half, with a Wilson interval."""
    model: Estimate
    """Unpaired mean of a (t interval), for the table beside the difference."""
    baseline: Estimate
    """Unpaired mean of b."""

    @property
    def separated(self) -> bool:
        """Both the t and the bootstrap interval exclude 0 (NaN intervals never do)."""
        return _excludes_zero(self.difference) and _excludes_zero(self.bootstrap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "difference": self.difference.to_dict(),
            "bootstrap": self.bootstrap.to_dict(),
            "win_rate": self.win_rate.to_dict(),
            "model_mean": self.model.to_dict(),
            "baseline_mean": self.baseline.to_dict(),
            "separated": self.separated,
        }


def _excludes_zero(estimate: Estimate) -> bool:
    return estimate.lower > 0 or estimate.upper < 0  # False for NaN


def paired_difference(
    a: Iterable[float] | torch.Tensor,
    b: Iterable[float] | torch.Tensor,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedDifference:
    """a_i - b_i over items scored for both (a model and a baseline on the same prompts).

    d̄ = Σ (a_i - b_i) / n with the paired t interval d̄ ± t_{(1+c)/2, n-1} · s_d / √n
    (`scipy.stats.ttest_rel`; Student 1908), and a paired bootstrap interval: items resampled
    with replacement, each keeping its pair (`scipy.stats.bootstrap` on the differences, BCa,
    Efron 1987; `n_resamples` draws from a generator seeded with `seed`, so a report is
    reproducible). Pairing removes what the two share: Var(d̄) = (σ_a² + σ_b² - 2 cov(a, b)) / n,
    so when per-prompt scores are correlated (a prompt's difficulty, shared sampling seeds)
    the paired interval is narrower than the two unpaired ones suggest, and a difference whose
    unpaired intervals overlap can still be separated from 0.

    Constant differences (all d_i equal) have the interval [d̄, d̄] from both methods (as
    `mean_ci`); fewer than two items give NaN intervals.
    """
    _check_confidence(confidence)
    xs, ys = np.asarray(_floats(a)), np.asarray(_floats(b))
    if xs.shape != ys.shape:
        raise ValueError(f"paired_difference needs paired scores, got {len(xs)} and {len(ys)}")
    differences = xs - ys
    n = len(differences)
    model, baseline = mean_ci(xs, confidence), mean_ci(ys, confidence)
    wins = win_rate(xs, ys, confidence)
    if n < 2:
        mean = float(differences.mean()) if n else math.nan
        t_est = Estimate(mean, math.nan, math.nan, math.nan, n, confidence, "paired t")
        boot = Estimate(mean, math.nan, math.nan, math.nan, n, confidence, "bootstrap")
        return PairedDifference(t_est, boot, wins, model, baseline)
    mean = math.fsum(differences.tolist()) / n
    if np.all(differences == differences[0]):
        t_est = Estimate(mean, 0.0, mean, mean, n, confidence, "paired t")
        boot = Estimate(mean, 0.0, mean, mean, n, confidence, "bootstrap")
        return PairedDifference(t_est, boot, wins, model, baseline)
    test = stats.ttest_rel(xs, ys)
    t_interval = test.confidence_interval(confidence)
    se = float(differences.std(ddof=1)) / math.sqrt(n)
    t_est = Estimate(
        mean, se, float(t_interval.low), float(t_interval.high), n, confidence, "paired t"
    )
    boot = _bootstrap((differences,), np.mean, mean, confidence, n_resamples, seed)
    return PairedDifference(t_est, boot, wins, model, baseline)


def _bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    mean: float,
    confidence: float,
    n_resamples: int,
    seed: int,
    **kwargs: Any,
) -> Estimate:
    """`mean` with the BCa bootstrap's SE and interval of `statistic` over the items of `data`
    (`scipy.stats.bootstrap`, `n_resamples` draws from a generator seeded with `seed`)."""
    resampled = stats.bootstrap(
        data, statistic, n_resamples=n_resamples, confidence_level=confidence, method="BCa",
        rng=np.random.default_rng(seed), **kwargs,
    )  # fmt: skip
    interval = resampled.confidence_interval
    return Estimate(
        mean, float(resampled.standard_error), float(interval.low), float(interval.high),
        len(data[0]), confidence, "bootstrap",
    )  # fmt: skip


def share_of_gap(
    a: Iterable[float] | torch.Tensor,
    reachable: Iterable[float] | torch.Tensor,
    baseline: Iterable[float] | torch.Tensor,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Estimate:
    """The share of the gap from `baseline` to `reachable` that `a` covers, on the same items.

    share = Σ (a_i - b_i) / Σ (r_i - b_i) = d̄_a / d̄_r: a ratio of two paired mean differences
    to one baseline, so 1 means `a` gained as much as `reachable` over the baseline, 0.5 half
    of it. Its interval is the paired bootstrap's (items resampled with their three scores
    kept together, `scipy.stats.bootstrap` with `paired=True`, BCa, Efron 1987; seeded as in
    `paired_difference`): a ratio has no t interval, and it is wide or undefined when d̄_r is
    near 0 (no gap to close). NaN interval for fewer than two items or a constant ratio.
    """
    _check_confidence(confidence)
    xs, rs, bs = (np.asarray(_floats(v)) for v in (a, reachable, baseline))
    if not xs.shape == rs.shape == bs.shape:
        raise ValueError(
            f"share_of_gap needs scores of the same items, got {len(xs)}, {len(rs)}, {len(bs)}"
        )
    gained, gap = xs - bs, rs - bs
    n = len(xs)
    total_gap = math.fsum(gap.tolist())
    mean = math.fsum(gained.tolist()) / total_gap if n and total_gap else math.nan
    # a constant per-item ratio (to float64 rounding of the differences) leaves nothing to resample
    rounding = (
        16 * np.finfo(np.float64).eps * float(np.abs(np.concatenate([xs, rs, bs])).max(initial=1))
    )
    if n < 2 or math.isnan(mean) or np.allclose(gained, mean * gap, rtol=0, atol=rounding):
        return Estimate(mean, math.nan, math.nan, math.nan, n, confidence, "bootstrap")

    def ratio(gained: np.ndarray, gap: np.ndarray, axis: int = -1) -> np.ndarray:
        return gained.sum(axis=axis) / gap.sum(axis=axis)

    return _bootstrap(
        (gained, gap), ratio, mean, confidence, n_resamples, seed, paired=True, vectorized=True
    )


@dataclass(frozen=True)
class SeedSpread:
    """Paired differences over several training seeds; see `seed_spread`."""

    across_seeds: Estimate
    """Mean of the per-seed differences with a t interval over seeds (df = seeds - 1)."""
    per_seed: tuple[Estimate, ...]
    """Each seed's difference with its interval across prompts."""

    @property
    def separated(self) -> bool:
        """The interval over seeds excludes 0."""
        return _excludes_zero(self.across_seeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "across_seeds": self.across_seeds.to_dict(),
            "per_seed": [estimate.to_dict() for estimate in self.per_seed],
            "n_seeds": len(self.per_seed),
            "separated": self.separated,
        }


def seed_spread(per_seed: Sequence[Estimate], confidence: float = 0.95) -> SeedSpread:
    """Combine one paired difference per training seed (each `paired_difference(...).difference`
    of a method trained with that seed, against the same baseline on the same prompts).

    across_seeds = mean_ci(d̄_1, ..., d̄_S): D̄ = Σ_s d̄_s / S ± t_{(1+c)/2, S-1} · s_D / √S. Each
    d̄_s carries the prompt (and sampling) noise of its evaluation; their spread adds the
    training noise, so this interval covers both, where one seed's interval covers only the
    first. With S = 1 the interval is NaN: one seed says nothing about training noise.
    """
    return SeedSpread(mean_ci([e.mean for e in per_seed], confidence), tuple(per_seed))


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
