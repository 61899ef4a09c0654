"""Packing tokenized examples into fixed-length rows, and collating rows into batches.

A packed row holds several examples back to back with `position_ids` restarting at 0 at
every example. Give the model `position_ids` and `attention_mask=None` (and `use_cache=False`:
transformers only looks for packed sequences when there is no cache); transformers 5.x
(`masking_utils.find_packed_sequence_indices`) then builds a block-diagonal causal mask, so
no token attends across an example boundary. The first label of every packed example is
IGNORE_INDEX, so after the model's shift no token is trained to predict the next example.
"""

from __future__ import annotations

import bisect

import torch

from alignlab.ops import IGNORE_INDEX


def pack_examples(
    examples: list[dict[str, list[int]]], max_length: int
) -> list[dict[str, list[int]]]:
    """Pack examples into rows of at most `max_length` tokens (best-fit decreasing).

    Deterministic: examples are placed longest first (ties by position) into the fullest row
    they fit; inside a row they keep their original order. Every token is kept. Rows carry
    `input_ids`, `labels` and `position_ids` (0, 1, ... per example).
    """
    if max_length <= 0:
        raise ValueError(f"packing needs max_length > 0, got {max_length}")
    lengths = [len(example["input_ids"]) for example in examples]
    for index, length in enumerate(lengths):
        if length > max_length:
            raise ValueError(
                f"example {index} has {length} tokens, more than max_length={max_length}; "
                "truncate before packing"
            )
    order = sorted((i for i in range(len(examples)) if lengths[i]), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            room, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        room -= lengths[i]
        if room > 0:
            bisect.insort(free, (room, row))
    packed = []
    for members in rows:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for i in sorted(members):
            example = examples[i]
            input_ids.extend(example["input_ids"])
            labels.append(IGNORE_INDEX)  # not predicted from the previous example
            labels.extend(example["labels"][1:])
            position_ids.extend(range(lengths[i]))
        packed.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids})
    return packed


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of (B, T) long tensors, T the longest example.

    `input_ids` (padded with pad_token_id), `labels` (IGNORE_INDEX on padding), `position_ids`,
    and for unpacked examples `attention_mask` (1 on tokens, 0 on padding). Packed examples
    (those with `position_ids`) get no `attention_mask` (the model derives the block-diagonal
    mask from the position ids) and their padding gets its own position ids from 0, so it is a
    separate sequence that no real token attends to.
    """
    if not examples:
        raise ValueError("collate() got an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; give the tokenizer a pad token")
    packed = ["position_ids" in example for example in examples]
    if any(packed) and not all(packed):
        raise ValueError(
            "a batch mixes packed examples (with position_ids) and unpacked ones; "
            "pack all of a dataset or none of it"
        )
    packed_batch = all(packed)
    lengths = []
    for index, example in enumerate(examples):
        length = len(example["input_ids"])
        keys = ("labels", "position_ids") if packed_batch else ("labels",)
        for key in keys:
            if key not in example:
                raise ValueError(f"example {index} has no '{key}'")
            if len(example[key]) != length:
                raise ValueError(
                    f"example {index}: {len(example[key])} {key} for {length} input_ids"
                )
        if length == 0:
            raise ValueError(f"example {index} is empty")
        lengths.append(length)
    batch, width = len(examples), max(lengths)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(width, dtype=torch.long).repeat(batch, 1)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for b, (example, length) in enumerate(zip(examples, lengths)):
        input_ids[b, :length] = torch.tensor(example["input_ids"], dtype=torch.long)
        labels[b, :length] = torch.tensor(example["labels"], dtype=torch.long)
        attention_mask[b, :length] = 1
        if packed_batch:
            position_ids[b, :length] = torch.tensor(example["position_ids"], dtype=torch.long)
            position_ids[b, length:] = torch.arange(width - length, dtype=torch.long)
    result = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if not packed_batch:
        result["attention_mask"] = attention_mask
    return result
