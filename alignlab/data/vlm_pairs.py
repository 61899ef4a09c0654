"""Vision-language preference pairs (VLM DPO and its family, the VLM reward model).

A row (TRL's vision preference format):
    {"images": ["images/train_00000.png"],
     "prompt":   [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ..}]}],
     "chosen":   [{"role": "assistant", "content": [{"type": "text", "text": ...}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": ...}]}]}
`chosen` / `rejected` may also be plain strings (one assistant turn). Each side becomes a
`VlmRow` of prompt + response with the row's images, encoded and truncated as SFT rows are
(`alignlab.data.vlm`: only the assistant turns train, image tokens are never cut), so the
pair trains on exactly what its two responses differ in.

The training rows carry the token ids the text pair recipes use (`chosen_input_ids`,
`chosen_labels`, `rejected_*`: lengths for the schedule, keys of the reference cache) and the
two `VlmRow`s; `collate_vlm_pairs` makes the (2B, T) batch with the chosen rows first, as
`alignlab.data.pairs.collate_pairs` does for text, so `split_pairs` and the pair losses apply
unchanged. Each side brings its own copy of the images (the processor runs per sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Record
from alignlab.data.vlm import (
    VlmRow,
    check_messages,
    collate_vlm,
    encode_vlm_row,
    image_parts,
    keep_good,
    read_checked,
    resolve_images,
)

SIDES = ("chosen", "rejected")


@dataclass(frozen=True)
class VlmPair:
    chosen: VlmRow
    rejected: VlmRow


def read_vlm_pairs(
    path: str | Path,
    max_records: int = 0,
    on_bad_example: str = "error",
    report: DataReport | None = None,
) -> list[VlmPair]:
    """The checked pairs of a TRL-format vision preference file (JSONL / JSON / parquet): a bad
    row is a DataError naming the file, the line and the field, or with
    on_bad_example="skip" left out and counted in `report`."""
    return read_checked(path, check_vlm_pair, max_records, on_bad_example, report)


def check_vlm_pair(record: Record) -> VlmPair:
    data = dict(record.data)
    for side in SIDES:  # a plain string is one assistant turn
        if isinstance(data.get(side), str):
            data[side] = [{"role": "assistant", "content": data[side]}]
    record = replace(record, data=data)
    prompt = check_messages(record, "prompt")
    responses = {side: check_messages(record, side) for side in SIDES}
    for side, messages in responses.items():
        if any(m["role"] != "assistant" for m in messages):
            raise DataError("must hold assistant turns only", field=side).at(record)
    images = resolve_images(record, sum(image_parts(m) for m in prompt))
    rows = {side: VlmRow(prompt + responses[side], images, record) for side in SIDES}
    return VlmPair(**rows)


def encode_vlm_pairs(
    pairs: list[VlmPair],
    processor: Any,
    max_length: int,
    on_bad_example: str = "error",
    report: DataReport | None = None,
) -> list[dict[str, Any]]:
    """Training rows {"chosen_input_ids", "chosen_labels", "rejected_input_ids",
    "rejected_labels", "chosen_row", "rejected_row"}: each side encoded once here, so a bad
    image or a prompt too long for `max_length` stops the run before training (or, with
    on_bad_example="skip", drops the pair, counted in `report`)."""

    def encode(pair: VlmPair) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for side in SIDES:
            vlm_row = getattr(pair, side)
            encoded = encode_vlm_row(vlm_row, processor, max_length)
            row[f"{side}_input_ids"] = encoded["input_ids"]
            row[f"{side}_labels"] = encoded["labels"]
            row[f"{side}_row"] = vlm_row
        return row

    return keep_good(pairs, encode, on_bad_example, report)


def collate_vlm_pairs(
    rows: list[dict[str, Any]], processor: Any, max_length: int
) -> dict[str, torch.Tensor]:
    """One (2B, T) batch of `encode_vlm_pairs` rows: the B chosen sequences first, then the B
    rejected ones, with their images in the same order."""
    sequences = [r["chosen_row"] for r in rows] + [r["rejected_row"] for r in rows]
    return collate_vlm(sequences, processor, max_length)
