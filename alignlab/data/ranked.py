"""Ranked lists (RRHF): several responses of one prompt with their scores."""

from __future__ import annotations

from typing import Any

from alignlab.data.report import DataReport
from alignlab.data.responses import Row, _tokenize_groups
from alignlab.data.schema import DataError, Example


def tokenize_ranked(
    examples: list[Example],
    fmt: str,
    tokenizer: Any,
    max_length: int,
    truncation: str,
    on_bad_example: str,
    report: DataReport,
) -> list[Row]:
    """Rows {"responses": [{"input_ids", "labels"}, ...], "scores": [float, ...]}.

    Preference pairs become two-response lists scored (1.0 chosen, 0.0 rejected)."""
    if fmt == "preference":
        examples = [
            Example(
                prompt=e.prompt,
                responses=[e.chosen, e.rejected],
                scores=[1.0, 0.0],
                record=e.record,
            )
            for e in examples
        ]
    elif fmt != "ranked":
        raise DataError(f"ranked rows need ranked or preference data, got {fmt}")
    groups = _tokenize_groups(
        examples,
        lambda e: [(f"responses[{i}]", e.prompt, r) for i, r in enumerate(e.responses)],
        tokenizer, max_length, truncation, on_bad_example, report,
    )  # fmt: skip
    return [{"responses": rows, "scores": list(example.scores)} for example, rows in groups]
