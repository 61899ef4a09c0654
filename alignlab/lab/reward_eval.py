"""A reward model against the lab's gold reward, on prompts it was not trained on.

For `n` prompts of a split (heldout by default) the lab's candidate policy mixture
(`sample_candidate`: oracle, imperfect, failure, rambling) draws `per_prompt` responses; the
reward function and gold score each. Reported (`alignlab.eval.reward_eval`):
- spearman_gold / pearson_gold: correlation of reward with gold over all responses;
- spearman_gold_within_prompt: the mean over prompts of the within-prompt Spearman (what a
  policy optimising the reward for a fixed prompt feels), prompts with a constant side skipped;
- accuracy_gold_pairs: pairwise accuracy on the within-prompt pairs whose gold differs,
  ordered by gold;
- length_spearman: correlation of reward with response length in words (length-bias alarm),
  and gold_length_spearman, the same for gold, to compare against.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from alignlab.eval.reward_eval import gold_correlation, pairwise_accuracy, spearman
from alignlab.lab.corpus import sample_candidate
from alignlab.lab.judge import words
from alignlab.lab.world import LabWorld


def reward_vs_gold(
    reward_fn: Callable[[Any, str], float],
    world: LabWorld,
    n: int = 200,
    per_prompt: int = 4,
    split: str = "heldout",
    seed: int = 0,
) -> dict[str, float]:
    """The module docstring's metrics for `reward_fn(prompt messages, response)`; a
    `RewardScorer` is such a function (its `score_batch` is used when present)."""
    rng = random.Random(f"alignlab-lab/{world.seed}/reward-eval/{seed}")
    prompts = world.prompts(split, n, stream=f"reward-eval-{seed}")
    items = [(p, sample_candidate(p, rng)) for p in prompts for _ in range(per_prompt)]
    batch = getattr(reward_fn, "score_batch", None)
    if callable(batch):
        rewards = batch([p.messages for p, _ in items], [r for _, r in items])
    else:
        rewards = [float(reward_fn(p.messages, r)) for p, r in items]
    gold = [world.score(p, r).total for p, r in items]
    lengths = [len(words(r)) for _, r in items]
    result = gold_correlation(rewards, gold, lengths)
    result["gold_length_spearman"] = spearman(gold, lengths)
    within, chosen, rejected = [], [], []
    for start in range(0, len(items), per_prompt):
        r, g = rewards[start : start + per_prompt], gold[start : start + per_prompt]
        rho = spearman(r, g)
        if not math.isnan(rho):
            within.append(rho)
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if g[i] != g[j]:
                    better, worse = (i, j) if g[i] > g[j] else (j, i)
                    chosen.append(r[better])
                    rejected.append(r[worse])
    result["spearman_gold_within_prompt"] = sum(within) / len(within) if within else math.nan
    result["accuracy_gold_pairs"] = pairwise_accuracy(chosen, rejected)
    result["responses"] = len(items)
    return result
