"""Reward-model evaluation from plain lists of numbers (no model, no lab).

- `pairwise_accuracy`: fraction of held-out pairs with r_w > r_l (a tie counts ½).
- `calibration`: expected calibration error (ECE) of the Bradley-Terry probability
  p = σ(r_w - r_l) that the chosen response wins. Binning is top-label (Guo et al. 2017):
  each pair's confidence is max(p, 1 - p) in [0.5, 1], and it is correct when the side the
  model favours is the labelled winner (p > ½; p = ½ counts ½). The confidences fall into
  `n_bins` equal-width bins over [0.5, 1]: bin b holds [0.5 + b·w, 0.5 + (b+1)·w) with
  w = 0.5 / n_bins, the last bin closed at 1. Then
      ECE = Σ_b (n_b / N) · |accuracy_b - mean confidence_b|   over non-empty bins.
  Pairs always list the labelled winner first, so scoring p against "chosen won" alone would
  reward pushing every p to 1; the top-label form checks that a 70 %-confident model is right
  70 % of the time in either direction.
- `spearman`: rank correlation (average ranks for ties, Pearson of the ranks). With gold scores
  (e.g. the lab's) it says how well the reward orders responses; against response lengths it is
  a length-bias alarm (`length_correlation`): a reward that mostly counts tokens will be
  exploited by a policy that rambles.

`evaluate_pairs` bundles the pairwise metrics, `gold_correlation` the gold/length ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _check_pairs(chosen: Sequence[float], rejected: Sequence[float]) -> None:
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen rewards but {len(rejected)} rejected rewards")


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Fraction of pairs with r_w > r_l, ties counting ½; nan for no pairs."""
    _check_pairs(chosen, rejected)
    if not chosen:
        return math.nan
    wins = sum(1.0 if w > r else 0.5 if w == r else 0.0 for w, r in zip(chosen, rejected))
    return wins / len(chosen)


def calibration(
    chosen: Sequence[float], rejected: Sequence[float], n_bins: int = 10
) -> dict[str, Any]:
    """ECE of σ(r_w - r_l) with top-label equal-width bins over [0.5, 1] (module docstring).

    Returns {"ece", "bins": [{"lower", "upper", "count", "confidence", "accuracy"}, ...]}
    (all bins, empty ones with count 0 and nan means: a reliability diagram's data).
    """
    _check_pairs(chosen, rejected)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    width = 0.5 / n_bins
    counts = [0] * n_bins
    confidence_sums = [0.0] * n_bins
    correct_sums = [0.0] * n_bins
    for w, r in zip(chosen, rejected):
        p = _sigmoid(float(w) - float(r))
        confidence = max(p, 1.0 - p)
        correct = 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        b = min(int((confidence - 0.5) / width), n_bins - 1)
        counts[b] += 1
        confidence_sums[b] += confidence
        correct_sums[b] += correct
    total = sum(counts)
    ece = 0.0 if total else math.nan
    bins = []
    for b in range(n_bins):
        n = counts[b]
        conf = confidence_sums[b] / n if n else math.nan
        acc = correct_sums[b] / n if n else math.nan
        if n:
            ece += n / total * abs(acc - conf)
        bins.append(
            {
                "lower": 0.5 + b * width,
                "upper": 0.5 + (b + 1) * width,
                "count": n,
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {"ece": ece, "bins": bins}


def expected_calibration_error(
    chosen: Sequence[float], rejected: Sequence[float], n_bins: int = 10
) -> float:
    """The ECE of `calibration`."""
    return calibration(chosen, rejected, n_bins)["ece"]


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan with fewer than 2 points or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson of average ranks (so ties are handled)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    return pearson(ranks([float(v) for v in x]), ranks([float(v) for v in y]))


def length_correlation(rewards: Sequence[float], lengths: Sequence[float]) -> float:
    """Spearman correlation of reward with response length (tokens or words): the length-bias
    alarm. Near 0 is healthy unless longer responses really are better in the data."""
    return spearman(rewards, lengths)


def evaluate_pairs(
    chosen: Sequence[float], rejected: Sequence[float], n_bins: int = 10
) -> dict[str, Any]:
    """Pairwise metrics of held-out pairs: accuracy, ECE (+ bins), reward margin and means."""
    _check_pairs(chosen, rejected)
    n = len(chosen)
    cal = calibration(chosen, rejected, n_bins)
    return {
        "pairs": n,
        "accuracy": pairwise_accuracy(chosen, rejected),
        "ece": cal["ece"],
        "margin": sum(w - r for w, r in zip(chosen, rejected)) / n if n else math.nan,
        "chosen_mean": sum(chosen) / n if n else math.nan,
        "rejected_mean": sum(rejected) / n if n else math.nan,
        "calibration_bins": cal["bins"],
    }


def gold_correlation(
    rewards: Sequence[float],
    gold: Sequence[float] | None = None,
    lengths: Sequence[float] | None = None,
) -> dict[str, float]:
    """{"spearman_gold", "pearson_gold"} with gold scores and {"length_spearman"} with lengths,
    for the same responses in the same order."""
    result: dict[str, float] = {}
    if gold is not None:
        result["spearman_gold"] = spearman(rewards, gold)
        result["pearson_gold"] = pearson(list(map(float, rewards)), list(map(float, gold)))
    if lengths is not None:
        result["length_spearman"] = length_correlation(rewards, lengths)
    return result
