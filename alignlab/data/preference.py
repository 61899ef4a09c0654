"""Preference data -> token ids and labels: `build_preference_dataset` loads, validates and
tokenizes a dataset for a preference recipe, in the format of its kind: pairs (`pairs.py`),
unpaired (`unpaired.py`, KTO), ranked lists (`ranked.py`, RRHF) or Chain of Hindsight SFT rows
(`hindsight.py`). How one response is tokenized and how over-long groups are truncated
(`keep_start`, `keep_end`, `skip`): `responses.py`."""

from __future__ import annotations

import logging
from typing import Any

from alignlab.config import DataConfig
from alignlab.data.collate import pack_examples
from alignlab.data.hindsight import chain_of_hindsight
from alignlab.data.pairs import tokenize_pairs
from alignlab.data.ranked import tokenize_ranked
from alignlab.data.report import DataReport
from alignlab.data.responses import Row
from alignlab.data.schema import DataError, detect_dataset_format, parse_examples
from alignlab.data.sources import load_records
from alignlab.data.tokenize import tokenize_sft
from alignlab.data.unpaired import tokenize_unpaired
from alignlab.data.win_rate import ranked_by_win_rate, unpaired_by_win_rate

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("pairs", "unpaired", "ranked", "hindsight")
"""What `build_preference_dataset` produces: DPO pairs, KTO rows, RRHF lists, CoH SFT rows."""
ACCEPTS: dict[str, tuple[str, ...]] = {
    "pairs": ("preference",),
    "unpaired": ("unpaired_preference", "preference"),
    "ranked": ("ranked", "preference"),
    "hindsight": ("preference",),
}
"""Dataset formats each kind accepts (preference data is converted for the other kinds)."""

PAIRS_AS: tuple[str, ...] = ("pairs", "win_rate")
"""How preference pairs become unpaired or ranked data: each on its own, or by win rate."""


def build_preference_dataset(
    cfg: DataConfig,
    tokenizer: Any,
    path: str | None = None,
    kind: str = "pairs",
    hindsight: dict[str, Any] | None = None,
    pairs_as: str = "pairs",
) -> tuple[list[Row], DataReport]:
    """Load, validate and tokenize `path` or `cfg.path` for a preference recipe.

    kind: "pairs" (`tokenize_pairs`), "unpaired" (`tokenize_unpaired`, paired data split),
    "ranked" (`tokenize_ranked`, pairs become two-response lists) or "hindsight" (SFT rows of
    `chain_of_hindsight`, whose keyword arguments `hindsight` holds; packed when cfg.packing).
    pairs_as (preference data for the unpaired and ranked kinds): "pairs", each pair on its
    own (split in two, or a two-response list), or "win_rate", each response labelled or
    scored by its win rate over all of its prompt's pairs (`alignlab.data.win_rate`).
    Raises a DataError for a format the kind cannot use, a bad record (on_bad_example="error"),
    or when no example is left.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if pairs_as not in PAIRS_AS:
        raise ValueError(f"pairs_as must be one of {PAIRS_AS}, got {pairs_as!r}")
    source = str(path or cfg.path)
    report = DataReport(truncation=cfg.truncation)
    records = load_records(
        source, cfg.split, cfg.max_examples, on_bad_example=cfg.on_bad_example, report=report
    )
    if not records:
        raise DataError(f"no records ({report.summary()})", source)
    fmt = cfg.format if cfg.format != "auto" else detect_dataset_format(records)
    if fmt not in ACCEPTS[kind]:
        raise DataError(
            f"this is {fmt} data; this recipe trains on {' or '.join(ACCEPTS[kind])} data "
            "(keys 'prompt'?+'chosen'+'rejected', 'prompt'+'completion'+'label', or "
            "'prompt'+'responses'+'scores')",
            source,
        )
    fmt, examples = parse_examples(records, fmt, cfg.on_bad_example, report)
    if pairs_as == "win_rate" and fmt == "preference" and kind in ("unpaired", "ranked"):
        convert = unpaired_by_win_rate if kind == "unpaired" else ranked_by_win_rate
        fmt = "unpaired_preference" if kind == "unpaired" else "ranked"
        pairs, examples = len(examples), convert(examples)
        report.converted(pairs, len(examples), f"{kind} by win rate")
    args = (tokenizer, cfg.max_length, cfg.truncation, cfg.on_bad_example, report)
    if kind == "pairs":
        rows = tokenize_pairs(examples, fmt, *args)
    elif kind == "unpaired":
        rows = tokenize_unpaired(examples, fmt, *args)
    elif kind == "ranked":
        rows = tokenize_ranked(examples, fmt, *args)
    else:
        annotated = chain_of_hindsight(examples, **(hindsight or {}))
        report.converted(len(examples), len(annotated), "Chain of Hindsight rows")
        sft_fmt = (
            "conversational" if annotated and annotated[0].conversational else "prompt_completion"
        )
        rows = tokenize_sft(
            annotated, sft_fmt, tokenizer, cfg.max_length, cfg.truncation,
            cfg.completion_only_loss, cfg.on_bad_example, report,
        )  # fmt: skip
        if cfg.packing and rows:
            rows = pack_examples(rows, cfg.max_length)
            report.packed(len(rows), cfg.max_length)
    if not rows:
        raise DataError(f"no usable examples: {report.summary()}", source)
    logger.info("%s: %s", source, report.summary())
    return rows, report
