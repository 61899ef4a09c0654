"""Unpaired preference data (KTO): one response with a desirable / undesirable label; pairs split
in two, and the mismatched prompt-completion rows of KTO's KL estimate."""

from __future__ import annotations

from typing import Any

from alignlab.data.report import DataReport
from alignlab.data.responses import Row, _split, _tokenize_groups
from alignlab.data.schema import DataError, Example


def pairs_to_unpaired(examples: list[Example]) -> list[Example]:
    """Preference pairs as unpaired feedback: chosen -> desirable, rejected -> undesirable
    (both keep the pair's record, so errors still name its file:line)."""
    out = []
    for example in examples:
        for completion, label in ((example.chosen, True), (example.rejected, False)):
            out.append(
                Example(
                    prompt=example.prompt, completion=completion, label=label, record=example.record
                )
            )
    return out


def tokenize_unpaired(
    examples: list[Example],
    fmt: str,
    tokenizer: Any,
    max_length: int,
    truncation: str,
    on_bad_example: str,
    report: DataReport,
) -> list[Row]:
    """Rows {"input_ids", "labels", "label": bool} for unpaired_preference examples (or
    preference examples, converted with `pairs_to_unpaired`)."""
    if fmt == "preference":
        pairs, examples = len(examples), pairs_to_unpaired(examples)
        report.converted(pairs, len(examples), "each pair split in two")
    elif fmt != "unpaired_preference":
        raise DataError(f"unpaired rows need unpaired_preference or preference data, got {fmt}")
    groups = _tokenize_groups(
        examples,
        lambda e: [("completion", e.prompt, e.completion)],
        tokenizer, max_length, truncation, on_bad_example, report,
    )  # fmt: skip
    return [{**rows[0], "label": bool(example.label)} for example, rows in groups]


def mismatched_row(prompt_row: Row, completion_row: Row, max_length: int = 0) -> Row:
    """The prompt of `prompt_row` followed by the completion of `completion_row` (KTO's
    mismatched pair for its KL reference point), cut at max_length (keep the start)."""
    split_p = _split(prompt_row["input_ids"], prompt_row["labels"])
    split_c = _split(completion_row["input_ids"], completion_row["labels"])
    ids = prompt_row["input_ids"][:split_p] + completion_row["input_ids"][split_c:]
    labels = prompt_row["labels"][:split_p] + completion_row["labels"][split_c:]
    if max_length and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}
