"""Dynamic sampling (DAPO, Yu et al. 2025, arXiv:2503.14476, sec. 3.2): a step trains only on
groups whose K rewards are not all equal.

A flat group has zero group-relative advantages: no gradient, yet its tokens would dilute a
token-mean loss. `dynamic_sample` drops flat groups and draws more batches for the same step
(`Collector(step, draw=d)`: random prompts, seeds from (step, d)) until every process has
`groups` informative groups or `max_draws` extra batches were drawn; a process still short
then keeps some flat groups, last, and marks them so the loss can mask them out. Every
process draws the same number of batches (their sampling and scoring are collectives).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from alignlab.rl.experience import Experience, select_groups
from alignlab.training import distributed

NEEDS_OLD_LOGPS = ("entropy", "kl_ref", "sampler_logp_diff", "sampler_kl")


@dataclasses.dataclass
class DynamicBatch:
    exp: Experience
    """The step's training batch: `groups` groups, informative ones first."""
    first: Experience
    """The step's first batch as drawn (unfiltered: the policy's own statistics)."""
    informative: torch.Tensor
    """(N,) bool: the sample's group is informative (False for the padding groups)."""
    stats: dict[str, float]
    """ds_draws, ds_flat_groups, ds_padded_groups, summed over processes."""

    def summary(self, runtime: distributed.Runtime) -> dict[str, float]:
        """The step's statistics, after the update: reward, length and the like from the
        first batch (the policy's own: the filter biases the trained batch towards groups of
        mixed rewards), those that need π_old (KL, entropy, sampler mismatch) from the trained
        batch, whose π_old the update has filled in when it was not scored; and `stats`."""
        trained = self.exp.summary(runtime)
        first = self.first.summary(runtime)  # always: both are collectives on every process
        return {**first, **{k: trained[k] for k in NEEDS_OLD_LOGPS if k in trained}, **self.stats}


def informative_groups(exp: Experience) -> list[bool]:
    """Per group: its K training rewards are not all equal."""
    grouped = exp.grouped(exp.scores)
    return (grouped.max(1).values > grouped.min(1).values).tolist()


def dynamic_sample(
    collect: Callable[..., Experience],
    step: int,
    groups: int,
    max_draws: int,
    runtime: distributed.Runtime,
) -> DynamicBatch:
    """The step's batch of `groups` groups per process (module docstring). `collect(step,
    draw=d)` returns a batch with its training rewards final (shaping applied)."""
    parts = [collect(step, draw=0)]
    flags = [informative_groups(parts[0])]
    while len(parts) <= max_draws:
        found = sum(sum(f) for f in flags)
        if not distributed.sum_floats([float(found < groups)], runtime)[0]:
            break
        parts.append(collect(step, draw=len(parts)))
        flags.append(informative_groups(parts[-1]))
    picks = [(p, g) for p, f in enumerate(flags) for g, keep in enumerate(f) if keep][:groups]
    padded = groups - len(picks)
    picks += [(p, g) for p, f in enumerate(flags) for g, keep in enumerate(f) if not keep][:padded]
    flat = sum(f.count(False) for f in flags)
    exp = parts[0] if picks == [(0, g) for g in range(groups)] else select_groups(parts, picks)
    k = exp.rollout.samples_per_prompt
    informative = torch.arange(groups * k) < (groups - padded) * k
    draws, flat_groups, padded_groups = distributed.sum_floats(
        [float(len(parts) - 1), float(flat), float(padded)], runtime
    )
    stats = {"ds_draws": draws, "ds_flat_groups": flat_groups, "ds_padded_groups": padded_groups}
    return DynamicBatch(exp, parts[0], informative, stats)
