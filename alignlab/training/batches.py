"""Which examples each optimizer step sees, as a pure function of (seed, step).

The data is a stream of shuffled epochs laid end to end; optimizer step s takes the next
`global_batch` examples of that stream. Resuming at step s therefore needs nothing but s, and
a run with 2 processes x micro-batch b sees exactly the examples of 1 process x 2b.
"""

from __future__ import annotations

import math

import torch

from alignlab.training.distributed import Runtime


class BatchSchedule:
    def __init__(self, num_examples: int, global_batch: int, seed: int) -> None:
        if num_examples == 0:
            raise ValueError("no training examples left after loading and filtering the data")
        self.num_examples = num_examples
        self.global_batch = global_batch
        self.seed = seed
        self._epochs: dict[int, list[int]] = {}

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epochs = {epoch: torch.randperm(self.num_examples, generator=generator).tolist()}
        return self._epochs[epoch]

    def step_indices(self, step: int) -> list[int]:
        """The `global_batch` example indices of optimizer step `step` (0-based)."""
        start = step * self.global_batch
        indices = []
        for position in range(start, start + self.global_batch):
            epoch, offset = divmod(position, self.num_examples)
            indices.append(self._epoch_order(epoch)[offset])
        return indices

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / self.num_examples

    def total_steps(self, epochs: float, max_steps: int = 0) -> int:
        if max_steps:
            return max_steps
        return max(1, math.ceil(epochs * self.num_examples / self.global_batch))


def micro_batches(
    indices: list[int], runtime: Runtime, micro_batch_size: int, grad_accum: int
) -> list[list[int]]:
    """This rank's `grad_accum` micro-batches out of one step's global indices."""
    per_rank = micro_batch_size * grad_accum
    mine = indices[runtime.rank * per_rank : (runtime.rank + 1) * per_rank]
    return [mine[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]
