"""What happened to the records on their way to token sequences: used, skipped, truncated."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_KEEP_LOCATIONS = 5


@dataclass
class DataReport:
    """Counts gathered while loading, parsing and tokenizing one data source.

    `records` counts every record read (malformed lines included); `used` the examples that
    made it into the dataset; `skipped` the dropped ones by reason; `truncated` the kept
    examples that were cut to max_length with policy `truncation`.
    """

    records: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    truncation: str = "keep_start"
    packed_rows: int = 0
    packed_length: int = 0
    skipped_at: dict[str, list[str]] = field(default_factory=dict)
    """The first few `path:line` locations of each skip reason, for the log."""
    conversions: list[str] = field(default_factory=list)
    """How used examples became others (`converted`), in order, for the summary."""

    def converted(self, before: int, after: int, how: str) -> None:
        """`before` used examples became `after` (pairs into win-rate rows, one pair into two
        hindsight rows, ...): `used` counts the new ones and the summary says how."""
        self.used += after - before
        self.conversions.append(f"{before} examples became {after} ({how})")

    def packed(self, rows: int, length: int) -> None:
        """The used examples were packed into `rows` sequences of at most `length` tokens."""
        self.packed_rows, self.packed_length = rows, length

    def skip(self, reason: str, where: str, message: str = "") -> None:
        """Count one skipped record; the first of each reason is logged as a warning."""
        first = reason not in self.skipped
        self.skipped[reason] += 1
        places = self.skipped_at.setdefault(reason, [])
        if len(places) < _KEEP_LOCATIONS:
            places.append(where)
        detail = message or f"{where}: {reason}"
        if first:
            logger.warning(
                "skipping bad example %s (later '%s' skips are only counted)", detail, reason
            )
        else:
            logger.debug("skipping bad example %s", detail)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line, e.g. `read 1000 records: 988 used, 12 skipped (7 empty completion, ...),
        31 truncated (keep_start)`."""
        text = f"read {self.records} records: {self.used} used"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
            text += f", {self.total_skipped} skipped ({reasons})"
        for conversion in self.conversions:
            text += f", {conversion}"
        if self.truncated:
            text += f", {self.truncated} truncated ({self.truncation})"
        if self.packed_rows:
            text += f"; packed into {self.packed_rows} sequences of <= {self.packed_length} tokens"
        return text


def row_length(row: dict) -> int:
    """Tokens in the longest sequence of one tokenized row (any `*input_ids` key: one sequence
    or a list of them, as in ranked rows): what the row pads a batch to."""
    longest = 0
    for key, value in row.items():
        if key.endswith("input_ids") and value:
            sequences = value if isinstance(value[0], list) else [value]
            longest = max(longest, *(len(s) for s in sequences))
    return longest


def longest_sequence(rows: list[dict]) -> int:
    """Tokens in the longest sequence of tokenized `rows` (`row_length`)."""
    return max((row_length(row) for row in rows), default=0)
