"""Best-of-n at inference: n answers, the one a reward scores highest is returned.

    y* = argmax_{y_1..y_n ~ π(.|x)} r(x, y_i)        (ties: the first)
    KL(π_bon ‖ π) <= log n - (n - 1) / n              (Beirami et al. 2024, arXiv:2401.01879)

The bound (Stiennon et al. 2020's formula) is reached only when no two of the n answers have
the same reward. `kl_estimate` measures the KL instead, from the picked answers' rewards and
the rewards of independent samples of π to the same prompts: π_bon(y) / π(y) depends on y only
through F(r(y)) = P_π(R <= r(y)) and F⁻ = P_π(R < r(y)),

    π_bon(y) / π(y) = (F^n - F⁻^n) / (F - F⁻)      (= n F^(n-1) without ties),

with F, F⁻ from the independent samples (add-one smoothed so no ratio is 0).

The reward is any of `alignlab.rl.rewards`: a reward-model folder, an ensemble, a Python
callable or an HTTP endpoint. It scores the answer to the user's query (`originals`), not to
a prompt an earlier strategy rewrote.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

from alignlab.config import option
from alignlab.icl.base import (
    Answer,
    Answerer,
    Backend,
    Query,
    Sampling,
    Strategy,
    derived_seed,
)
from alignlab.models.generation import model_device
from alignlab.rl.rewards import RewardOptions


def kl_estimate(picked: Sequence[float], references: Sequence[Sequence[float]], n: int) -> float:
    """Mean over prompts of log π_bon(y*) / π(y*) (module docstring): `picked[i]` the reward of
    prompt i's answer, `references[i]` rewards of independent samples of π to prompt i."""
    if len(picked) != len(references) or not picked:
        raise ValueError(f"{len(picked)} picked rewards for {len(references)} reference lists")
    total = 0.0
    for r, refs in zip(picked, references):
        m = len(refs)
        below = sum(1 for x in refs if x < r)
        at_most = sum(1 for x in refs if x <= r)
        upper, lower = (at_most + 1) / (m + 1), below / (m + 1)
        total += math.log((upper**n - lower**n) / (upper - lower))
    return total / len(picked)


def kl_best_of_n(n: int) -> float:
    """log n - (n - 1) / n: the analytic KL of best-of-n to the base (an upper bound)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclasses.dataclass
class BestOfNConfig(RewardOptions):
    n: int = option(8, "answers sampled per query", min=1)


class BestOfN(Strategy):
    name = "best_of_n"
    Config = BestOfNConfig

    def __init__(self, config: BestOfNConfig) -> None:
        super().__init__(config)
        config.require_reward("best_of_n.reward")
        self.reward_fn = None

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        n = self.config.n
        if self.reward_fn is None:  # built on first use: on the wrapped model's device
            self.reward_fn, _ = self.config.build(model_device(backend.model))
        # candidate 0 draws with the query's own seed: best-of-1 is the plain answer
        expanded_seeds = [
            s if k == 0 else derived_seed(s, "best_of_n", k) for s in seeds for k in range(n)
        ]
        candidates = inner([q for q in queries for _ in range(n)], sampling, expanded_seeds)
        start = time.perf_counter()
        rewards = self.reward_fn(
            [q for q in originals for _ in range(n)], [c.text for c in candidates], None
        )
        scoring = (time.perf_counter() - start) / max(len(queries), 1)
        answers = []
        for i in range(len(queries)):
            group = candidates[i * n : (i + 1) * n]
            scores = rewards[i * n : (i + 1) * n]
            best = max(range(n), key=lambda k: (scores[k], -k))
            chosen = group[best]
            for other in group:
                if other is not chosen:
                    chosen.cost += other.cost
            chosen.cost.forwards += n  # one reward-model pass per candidate
            chosen.cost.seconds += scoring
            chosen.info["best_of_n"] = {
                "n": n,
                "rewards": list(scores),
                "picked": best,
                "reward": scores[best],
                "kl_bound": kl_best_of_n(n),
            }
            answers.append(chosen)
        return answers
