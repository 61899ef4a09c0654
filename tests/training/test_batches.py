"""training/batches.py: which examples each step sees, with and without group_by_length."""

import random

import pytest

from alignlab.training.batches import GROUP_BATCHES, BatchSchedule


def epoch(schedule, number, steps_per_epoch):
    first = number * steps_per_epoch
    return [schedule.step_indices(s) for s in range(first, first + steps_per_epoch)]


def padded_tokens(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


@pytest.mark.parametrize("grouped", [False, True])
def test_every_epoch_is_a_permutation_and_a_function_of_seed_and_step(grouped):
    n, batch = 640, 8
    lengths = [random.Random(i).randint(5, 120) for i in range(n)] if grouped else None
    schedule = BatchSchedule(n, batch, seed=3, lengths=lengths)
    for number in range(3):
        seen = [i for b in epoch(schedule, number, n // batch) for i in b]
        assert sorted(seen) == list(range(n))
    # resuming at step s: a new schedule gives the same batches
    again = BatchSchedule(n, batch, seed=3, lengths=lengths)
    assert [again.step_indices(s) for s in (161, 5, 80)] == [
        schedule.step_indices(s) for s in (161, 5, 80)
    ]
    assert epoch(schedule, 0, n // batch) != epoch(schedule, 1, n // batch)


def test_group_by_length_batches_similar_lengths_in_random_order():
    n, batch = 2 * GROUP_BATCHES * 16, 16
    rng = random.Random(0)
    lengths = [rng.randint(20, 120) for _ in range(n)]
    steps = n // batch
    plain = epoch(BatchSchedule(n, batch, seed=0), 0, steps)
    grouped = epoch(BatchSchedule(n, batch, seed=0, lengths=lengths), 0, steps)
    # uniform lengths 20..120: a random batch of 16 pads to ~114, about 1.6x its 70 tokens;
    # sorted groups of 800 pad each batch to within ~1/50 of the range of its own lengths
    assert padded_tokens(grouped, lengths) < 1.1 * sum(lengths)
    assert padded_tokens(plain, lengths) > 1.4 * sum(lengths)
    for b in grouped:  # longest first inside a batch, so micro-batches split it by length
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    longest = [max(lengths[i] for i in b) for b in grouped]
    # the batches of a group come in random order, not longest to shortest
    assert longest[:GROUP_BATCHES] != sorted(longest[:GROUP_BATCHES], reverse=True)


def test_lengths_must_cover_every_example():
    with pytest.raises(ValueError, match="3 lengths for 4 examples"):
        BatchSchedule(4, 2, seed=0, lengths=[1, 2, 3])


def test_a_recipe_schedule_groups_rows_by_their_longest_sequence():
    import torch

    from alignlab.config import TrainConfig
    from alignlab.training.distributed import Runtime
    from alignlab.training.loop import training_schedule

    cpu = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    rows = [  # a preference row pads its batch to the longer of its two sequences
        {"chosen_input_ids": [1] * 9, "rejected_input_ids": [1] * 4, "prompt_len": 2},
        {"input_ids": [1] * 3, "labels": [1] * 3},
        {"input_ids": [[1] * 2, [1] * 7]},  # ranked lists: the longest of the list
    ]
    grouped, steps, global_batch = training_schedule(
        rows, TrainConfig(micro_batch_size=2, group_by_length=True), cpu
    )
    assert grouped.lengths == [9, 3, 7] and (steps, global_batch) == (2, 2)
    plain, _, _ = training_schedule(rows, TrainConfig(micro_batch_size=2), cpu)
    assert plain.lengths is None
