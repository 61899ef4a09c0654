import random

import pytest
import torch

from alignlab.data.collate import collate, pack_examples
from alignlab.ops import IGNORE_INDEX


def make_examples(lengths, seed=0):
    rng = random.Random(seed)
    examples = []
    for length in lengths:
        ids = [rng.randrange(4, 100) for _ in range(length)]
        prompt = rng.randrange(0, length)
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def split_row(row):
    """The examples of a packed row, cut where position_ids restart at 0."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [(s, e) for s, e in zip(starts, starts[1:])]


def test_packing_keeps_every_token_within_max_length():
    lengths = [(i * 7919) % 40 + 1 for i in range(100)]
    examples = make_examples(lengths)
    rows = pack_examples(examples, 64)
    assert all(len(row["input_ids"]) <= 64 for row in rows)
    assert all(
        len(row["labels"]) == len(row["position_ids"]) == len(row["input_ids"]) for row in rows
    )
    # every example appears exactly once, intact, with positions 0..n-1 and its labels
    # (the first label of each example is IGNORE_INDEX: nothing in the row predicts it)
    found = []
    for row in rows:
        for s, e in split_row(row):
            assert row["position_ids"][s:e] == list(range(e - s))
            assert row["labels"][s] == IGNORE_INDEX
            found.append((tuple(row["input_ids"][s:e]), tuple(row["labels"][s + 1 : e])))
    expected = [(tuple(ex["input_ids"]), tuple(ex["labels"][1:])) for ex in examples]
    assert sorted(found) == sorted(expected)
    assert sum(len(row["input_ids"]) for row in rows) == sum(lengths)
    # best-fit decreasing packs tightly: at most one row more than the lower bound
    assert len(rows) <= -(-sum(lengths) // 64) + 1


def test_packing_is_deterministic_and_keeps_order_inside_rows():
    examples = make_examples([5, 9, 3, 7, 2, 8])
    rows = pack_examples(examples, 12)
    assert rows == pack_examples(examples, 12)
    ids_to_index = {tuple(ex["input_ids"]): i for i, ex in enumerate(examples)}
    for row in rows:
        order = [ids_to_index[tuple(row["input_ids"][s:e])] for s, e in split_row(row)]
        assert order == sorted(order)


def test_packing_refuses_over_long_examples():
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than max_length=8"):
        pack_examples(make_examples([3, 9]), 8)
    with pytest.raises(ValueError, match="max_length > 0"):
        pack_examples(make_examples([3]), 0)


def test_collate_unpacked():
    examples = make_examples([3, 5, 2])
    batch = collate(examples, pad_token_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask"}
    for key, tensor in batch.items():
        assert tensor.shape == (3, 5) and tensor.dtype == torch.long, key
    assert batch["input_ids"][0].tolist() == examples[0]["input_ids"] + [0, 0]
    assert batch["labels"][0].tolist() == examples[0]["labels"] + [IGNORE_INDEX] * 2
    assert batch["labels"][2, 2:].tolist() == [IGNORE_INDEX] * 3
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [list(range(5))] * 3


def test_collate_packed_has_no_attention_mask_and_restarts_padding_positions():
    rows = pack_examples(make_examples([4, 3, 6, 2]), 8)
    batch = collate(rows, pad_token_id=1)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    width = max(len(row["input_ids"]) for row in rows)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][b].tolist() == row["input_ids"] + [1] * (width - n)
        assert batch["labels"][b].tolist() == row["labels"] + [IGNORE_INDEX] * (width - n)
        assert batch["position_ids"][b].tolist() == row["position_ids"] + list(range(width - n))
    assert any(len(row["input_ids"]) < width for row in rows)  # padding was exercised


def test_collate_refuses_bad_batches():
    plain = make_examples([3])
    packed = pack_examples(make_examples([2, 2]), 4)
    with pytest.raises(ValueError, match="mixes packed examples"):
        collate(plain + packed, pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        collate(plain, pad_token_id=None)
    with pytest.raises(ValueError, match="empty batch"):
        collate([], pad_token_id=0)
    with pytest.raises(ValueError, match="example 0: 2 labels for 3 input_ids"):
        collate([{"input_ids": [1, 2, 3], "labels": [1, 2]}], pad_token_id=0)
