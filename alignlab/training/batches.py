"""Which examples each optimizer step sees, as a pure function of (seed, step).

The data is a stream of shuffled epochs laid end to end; optimizer step s takes the next
`global_batch` examples of that stream. Resuming at step s therefore needs nothing but s, and
a run with 2 processes x micro-batch b sees exactly the examples of 1 process x 2b.

With `lengths` (group_by_length) an epoch's shuffled order is cut into groups of
`GROUP_BATCHES` global batches; each group is sorted by length, cut into global batches, and
those batches are shuffled: a batch holds examples of similar length (little padding, and its
micro-batches split it in length order), the data still arrives in random order, and the
order is still a function of (seed, epoch) alone, so resuming needs nothing new.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from alignlab.training.distributed import Runtime


@dataclasses.dataclass
class TrainData:
    """What a training loop needs of its data, text or vision: the rows the schedule indexes
    (each with its `*input_ids`, for lengths), the eval rows, and `collate`, which makes one
    model batch (on the CPU) of a list of rows. A vision-language recipe differs from its text
    recipe only here: its `collate` runs the processor on the rows' images
    (`alignlab.data.vlm`), and the loop is the text recipe's."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


GROUP_BATCHES = 50
"""Global batches sorted together by group_by_length (HF's LengthGroupedSampler: 50)."""


class BatchSchedule:
    def __init__(
        self,
        num_examples: int,
        global_batch: int,
        seed: int,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if num_examples == 0:
            raise ValueError("no training examples left after loading and filtering the data")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
        self.num_examples = num_examples
        self.global_batch = global_batch
        self.seed = seed
        self.lengths = list(lengths) if lengths is not None else None
        self._epochs: dict[int, list[int]] = {}

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
            if self.lengths is not None:
                order = self._grouped_by_length(order, generator)
            self._epochs = {epoch: order}
        return self._epochs[epoch]

    def _grouped_by_length(self, order: list[int], generator: torch.Generator) -> list[int]:
        lengths, size = self.lengths, self.global_batch
        grouped: list[int] = []
        for start in range(0, len(order), size * GROUP_BATCHES):
            group = sorted(order[start : start + size * GROUP_BATCHES], key=lambda i: -lengths[i])
            batches = [group[i : i + size] for i in range(0, len(group), size)]
            for b in torch.randperm(len(batches), generator=generator).tolist():
                grouped.extend(batches[b])
        return grouped

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


def eval_rounds(num_batches: int, runtime: Runtime) -> list[int]:
    """Batch numbers this process runs when `num_batches` batches are spread over processes:
    every process runs the same count (FSDP2 forwards are collective); numbers >= num_batches
    are repeats whose results the caller drops."""
    rounds = -(-num_batches // runtime.world_size)
    return list(range(runtime.rank, rounds * runtime.world_size, runtime.world_size))
