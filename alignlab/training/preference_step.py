"""Pieces shared by the preference recipes (DPO family, KTO, RRHF): per-sequence log-prob
statistics, step-level metric sums reduced over processes, and the optimizer step.

Normalisation convention (as in SFT): every term of a recipe's loss is a sum over the
examples (or tokens) of a micro-batch divided by the count of the whole optimizer step (all
micro-batches, all processes), so gradient accumulation and data parallelism are exact.
"""

from __future__ import annotations

import dataclasses

import torch

from alignlab.models.lm import TokenLogProbs
from alignlab.training import distributed
from alignlab.training.distributed import Runtime


@dataclasses.dataclass
class SequenceLogProbs:
    """Per-sequence statistics of a (N, T) `TokenLogProbs` output."""

    sums: torch.Tensor
    """(N,) summed log-probs of the trained tokens (with gradient)."""
    counts: torch.Tensor
    """(N,) number of trained tokens, float32."""

    @property
    def means(self) -> torch.Tensor:
        """(N,) length-averaged log-probs (mean token log-prob)."""
        return self.sums / self.counts.clamp(min=1)


def sequence_stats(token_logps: torch.Tensor, batch: dict[str, torch.Tensor]) -> SequenceLogProbs:
    """Sums and counts of the trained tokens of each row of `batch`."""
    mask = TokenLogProbs.mask(batch)
    sums = (token_logps.float() * mask.to(torch.float32)).sum(-1)
    return SequenceLogProbs(sums=sums, counts=mask.sum(-1).to(torch.float32))


def global_sum(value: float, runtime: Runtime) -> float:
    """A Python number summed over processes."""
    tensor = torch.tensor(float(value), dtype=torch.float64, device=runtime.device)
    return distributed.all_reduce_sum(tensor, runtime).item()


class StepSums:
    """Named float64 sums over the micro-batches of a step, reduced over processes at the end.

    Every process must `add` the same names in the same order (they are reduced as one vector).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.values: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().double().sum().to(self.device)
        else:
            value = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        self.values[name] = self.values.get(name, 0.0) + value

    def reduce(self, runtime: Runtime) -> dict[str, float]:
        if not self.values:
            return {}
        names = list(self.values)
        stacked = torch.stack([torch.as_tensor(self.values[n]) for n in names])
        total = distributed.all_reduce_sum(stacked, runtime)
        return dict(zip(names, total.tolist()))
