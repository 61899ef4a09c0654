"""Preference pairs (DPO, IPO, SLiC, ORPO, SimPO, the reward model): tokenized chosen and
rejected responses of one prompt, and their (2B, T) batches, chosen rows first."""

from __future__ import annotations

from typing import Any

import torch

from alignlab.data.collate import collate
from alignlab.data.report import DataReport
from alignlab.data.responses import Row, _tokenize_groups
from alignlab.data.schema import DataError, Example


def tokenize_pairs(
    examples: list[Example],
    fmt: str,
    tokenizer: Any,
    max_length: int,
    truncation: str,
    on_bad_example: str,
    report: DataReport,
) -> list[Row]:
    """Rows {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}.

    Trained: the response and its EOS (strings), the response's assistant turns with their
    end-of-turn markers (conversational). Truncation and bad examples: see the module doc.
    """
    if fmt != "preference":
        raise DataError(f"pairs need preference data (chosen/rejected), got {fmt}")
    groups = _tokenize_groups(
        examples,
        lambda e: [("chosen", e.prompt, e.chosen), ("rejected", e.prompt, e.rejected)],
        tokenizer, max_length, truncation, on_bad_example, report,
    )  # fmt: skip
    return [
        {
            "chosen_input_ids": chosen["input_ids"],
            "chosen_labels": chosen["labels"],
            "rejected_input_ids": rejected["input_ids"],
            "rejected_labels": rejected["labels"],
        }
        for _, (chosen, rejected) in groups
    ]


def collate_pairs(rows: list[Row], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One (2B, T) batch: the B chosen sequences first, then the B rejected ones, so both go
    through a single forward. `split_pairs` cuts a (2B, ...) result back into the halves."""
    sequences = [{"input_ids": r["chosen_input_ids"], "labels": r["chosen_labels"]} for r in rows]
    sequences += [
        {"input_ids": r["rejected_input_ids"], "labels": r["rejected_labels"]} for r in rows
    ]
    return collate(sequences, pad_token_id)


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) halves of a (2B, ...) tensor from a `collate_pairs` batch."""
    half = values.shape[0] // 2
    return values[:half], values[half:]
