"""Examples -> token ids and labels for supervised fine-tuning.

A sequence is built from text segments [(text, trained?)], each tokenized on its own with
add_special_tokens=False and concatenated, so the trained tokens are exactly those of the
trained segments. Labels follow the HF convention: aligned with `input_ids`, not shifted;
labels[t] = input_ids[t] where trained, IGNORE_INDEX elsewhere (the model code shifts).
"""

from __future__ import annotations

import logging
from typing import Any

from alignlab.config import DataConfig
from alignlab.data.collate import pack_examples
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Example, detect_dataset_format, parse_examples
from alignlab.data.sources import load_records
from alignlab.data.templates import chat_segments
from alignlab.ops import IGNORE_INDEX

logger = logging.getLogger(__name__)

SFT_FORMATS: tuple[str, ...] = ("language_modeling", "prompt_completion", "conversational")
TRUNCATIONS: tuple[str, ...] = ("keep_start", "keep_end", "skip")

Segments = list[tuple[str, bool]]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer has a BOS token and puts it in front when encoding normally."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def _assemble(
    tokenizer: Any,
    segments: Segments,
    encoded: list[list[int]],
    add_bos: bool,
    append_eos: bool,
) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    first = next((text for text, _ in segments if text), "")
    if add_bos and not first.startswith(tokenizer.bos_token):
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for (_, trained), piece in zip(segments, encoded):
        ids.extend(piece)
        labels.extend(piece if trained else [IGNORE_INDEX] * len(piece))
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)
    return ids, labels


def tokenize_segments(
    tokenizer: Any,
    segments: Segments,
    *,
    add_bos: bool | None = None,
    append_eos: bool = False,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for [(text, trained?)] segments.

    Each segment is tokenized with add_special_tokens=False. A BOS goes first (untrained) when
    the tokenizer has one, normally adds it (`add_bos=None` asks it), and the text does not
    already start with it. `append_eos` ends the sequence with a trained EOS token (unless the
    text already ends with one).
    """
    segments = [(text, trained) for text, trained in segments if text]
    if add_bos is None:
        add_bos = adds_bos(tokenizer)
    encoded = _encode(tokenizer, [text for text, _ in segments])
    return _assemble(tokenizer, segments, encoded, add_bos, append_eos)


def sft_segments(
    example: Example, tokenizer: Any, completion_only_loss: bool = True
) -> tuple[Segments, bool]:
    """(segments, append_eos) of one SFT example (language_modeling, prompt_completion or
    conversational)."""
    if example.text is not None:
        return [(example.text, True)], True
    if example.messages is not None:
        return chat_segments(tokenizer, example.messages, train_all=not completion_only_loss), False
    if isinstance(example.completion, list):
        prompt = list(example.prompt or [])
        try:
            segments = chat_segments(
                tokenizer,
                prompt + example.completion,
                train_from=len(prompt),
                train_all=not completion_only_loss,
            )
        except DataError as err:
            raise _rename_message_field(err, len(prompt)) from None
        return segments, False
    if isinstance(example.completion, str):
        prompt = example.prompt or ""
        return [(prompt, not completion_only_loss), (example.completion, True)], True
    raise DataError(
        "not an SFT example: it needs 'text', 'messages' or 'prompt' + 'completion'",
        reason="not an SFT example",
    )


def _rename_message_field(err: DataError, prompt_length: int) -> DataError:
    """An error on messages[i] of prompt + completion, renamed to prompt[i] / completion[j]."""
    field = err.field or "messages"
    if field.startswith("messages["):
        index, _, rest = field[len("messages[") :].partition("]")
        i = int(index)
        field = (
            f"prompt[{i}]{rest}" if i < prompt_length else f"completion[{i - prompt_length}]{rest}"
        )
    elif field == "messages":
        field = "completion"
    return DataError(err.message, field=field, reason=err.reason)


def _prompt_field(example: Example) -> str:
    return "messages" if example.messages is not None else "prompt"


def _fit(
    ids: list[int],
    labels: list[int],
    example: Example,
    max_length: int,
    truncation: str,
    has_bos: bool,
    report: DataReport,
) -> dict[str, list[int]] | None:
    """The example within max_length per `truncation`; None when skipped for its length.

    Raises a DataError when no trained token is left (a trained token at position 0 does not
    count: nothing predicts it).
    """
    prompt_tokens = next(
        (i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)
    )
    truncated = bool(max_length) and len(ids) > max_length
    if truncated:
        if truncation == "skip":
            report.skip(
                f"longer than max_length={max_length}",
                example.record.where(),
                f"{example.record.where()}: {len(ids)} tokens, longer than max_length={max_length}",
            )
            return None
        if truncation == "keep_start":
            ids, labels = ids[:max_length], labels[:max_length]
        else:  # keep_end: the completion's end and the prompt's tail; keep a leading BOS
            keep = 1 if has_bos and max_length > 1 else 0
            tail = max_length - keep
            ids, labels = ids[:keep] + ids[-tail:], labels[:keep] + labels[-tail:]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        if truncated and truncation == "keep_start":
            raise DataError(
                f"the prompt is {prompt_tokens} tokens, so max_length={max_length} leaves "
                "no completion token to train on; raise data.max_length, use "
                "truncation=keep_end, or on_bad_example=skip",
                field=_prompt_field(example),
                reason=f"prompt longer than max_length={max_length}",
            )
        raise DataError(
            f"no trained token within max_length={max_length}"
            if truncated
            else "no token to train on",
            field=_prompt_field(example),
            reason=f"no trained tokens within max_length={max_length}"
            if truncated
            else "no trained tokens",
        )
    if truncated:
        report.truncated += 1
    return {"input_ids": ids, "labels": labels}


def tokenize_sft(
    examples: list[Example],
    fmt: str,
    tokenizer: Any,
    max_length: int,
    truncation: str,
    completion_only_loss: bool,
    on_bad_example: str,
    report: DataReport,
) -> list[dict[str, list[int]]]:
    """Token ids and labels ({"input_ids", "labels"}) for SFT examples.

    Trained: the completion and its EOS (prompt_completion), every assistant turn with its
    end-of-turn marker (conversational), everything plus EOS (language_modeling); with
    completion_only_loss=False every token. Over-long examples are cut per `truncation`
    (keep_start, keep_end) or skipped ("skip"), counted in `report`. An example with no trained
    token left raises a DataError (on_bad_example="error") or is skipped and counted.
    """
    if fmt not in SFT_FORMATS:
        raise DataError(f"SFT cannot train on {fmt} data; it accepts {', '.join(SFT_FORMATS)}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    report.truncation = truncation
    add_bos = adds_bos(tokenizer)

    # segments of all examples first, then one batched tokenizer call (much faster)
    prepared: list[tuple[Example, Segments, bool] | DataError] = []
    texts: list[str] = []
    for example in examples:
        try:
            segments, append_eos = sft_segments(example, tokenizer, completion_only_loss)
        except DataError as err:
            prepared.append(err.at(example.record, _prompt_field(example)))
            continue
        segments = [(text, trained) for text, trained in segments if text]
        prepared.append((example, segments, append_eos))
        texts.extend(text for text, _ in segments)
    encoded = _encode(tokenizer, texts)

    rows: list[dict[str, list[int]]] = []
    offset = 0
    for item in prepared:
        try:
            if isinstance(item, DataError):
                raise item
            example, segments, append_eos = item
            pieces = encoded[offset : offset + len(segments)]
            offset += len(segments)
            ids, labels = _assemble(tokenizer, segments, pieces, add_bos, append_eos)
            has_bos = add_bos and bool(ids) and ids[0] == tokenizer.bos_token_id
            try:
                row = _fit(ids, labels, example, max_length, truncation, has_bos, report)
            except DataError as err:
                raise err.at(example.record) from None
        except DataError as err:
            if on_bad_example == "error":
                raise
            report.skip(err.reason, f"{err.source}:{err.line}", str(err))
            report.used -= 1
            continue
        if row is None:
            report.used -= 1
            continue
        rows.append(row)
    if report.truncated:
        logger.info(
            "%d examples truncated to max_length=%d (%s)", report.truncated, max_length, truncation
        )
    return rows


def build_sft_dataset(
    cfg: DataConfig, tokenizer: Any, path: str | None = None
) -> tuple[list[dict[str, list[int]]], DataReport]:
    """Load, validate, tokenize (and pack when cfg.packing) `path` or `cfg.path` for SFT.

    Returns the rows ({"input_ids", "labels"}, plus "position_ids" when packed) and the report.
    Raises a DataError for a non-SFT format, a bad record (on_bad_example="error"), or when no
    example is left.
    """
    source = str(path or cfg.path)
    report = DataReport(truncation=cfg.truncation)
    records = load_records(
        source, cfg.split, cfg.max_examples, on_bad_example=cfg.on_bad_example, report=report
    )
    if not records:
        raise DataError(f"no records ({report.summary()})", source)
    fmt = cfg.format if cfg.format != "auto" else detect_dataset_format(records)
    if fmt not in SFT_FORMATS:
        raise DataError(
            f"this is {fmt} data, which SFT cannot train on; SFT accepts "
            f"{', '.join(SFT_FORMATS)} (keys 'text', 'prompt'+'completion', or 'messages')",
            source,
        )
    fmt, examples = parse_examples(records, fmt, cfg.on_bad_example, report)
    rows = tokenize_sft(
        examples,
        fmt,
        tokenizer,
        cfg.max_length,
        cfg.truncation,
        cfg.completion_only_loss,
        cfg.on_bad_example,
        report,
    )
    if not rows:
        raise DataError(f"no usable examples: {report.summary()}", source)
    if cfg.packing:
        rows = pack_examples(rows, cfg.max_length)
        report.packed(len(rows), cfg.max_length)
    logger.info("%s: %s", source, report.summary())
    return rows, report
