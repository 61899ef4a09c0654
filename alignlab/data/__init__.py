"""Data: load records, validate them against TRL-style formats, tokenize with loss masks, pack
and collate.

    records = load_records("data/train.jsonl")            # sources.py
    fmt, examples = parse_examples(records)               # schema.py (format auto-detected)
    rows = tokenize_sft(examples, fmt, tokenizer, ...)    # tokenize.py
    batch = collate(rows[:8], tokenizer.pad_token_id)     # collate.py

or all at once for SFT: `rows, report = build_sft_dataset(cfg.data, tokenizer)`.
"""

from alignlab.data.collate import collate, pack_examples
from alignlab.data.report import DataReport
from alignlab.data.schema import (
    FORMATS,
    DataError,
    Example,
    Record,
    detect_dataset_format,
    detect_format,
    extract_prompt,
    parse_examples,
)
from alignlab.data.sources import load_records
from alignlab.data.templates import (
    DEFAULT_CHAT_TEMPLATE,
    chat_segments,
    ensure_chat_template,
    render_messages,
    render_prompt,
)
from alignlab.data.tokenize import (
    SFT_FORMATS,
    build_sft_dataset,
    tokenize_segments,
    tokenize_sft,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "FORMATS",
    "SFT_FORMATS",
    "DataError",
    "DataReport",
    "Example",
    "Record",
    "build_sft_dataset",
    "chat_segments",
    "collate",
    "detect_dataset_format",
    "detect_format",
    "ensure_chat_template",
    "extract_prompt",
    "load_records",
    "pack_examples",
    "parse_examples",
    "render_messages",
    "render_prompt",
    "tokenize_segments",
    "tokenize_sft",
]
