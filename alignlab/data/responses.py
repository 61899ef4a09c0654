"""One response of preference data -> token ids and labels, and groups of responses that share
a prompt (a pair, a ranked list), truncated together: the pieces every preference format uses.

Every response is tokenized exactly as SFT tokenizes a completion (`tokenize.tokenize_segments`):
standard strings are [prompt (untrained), response (trained)] + a trained EOS; conversational
data goes through the chat template with the response's assistant turns trained, end-of-turn
marker included (`templates.chat_segments`). Labels are aligned with `input_ids` (HF style).

Truncation of over-long sequences (max_length counts prompt + response tokens):

- `keep_start`: the sequence is cut at its end, so the prompt is whole and the response keeps
  its head. A prompt of max_length tokens or more leaves no response token: a bad example.
- `keep_end`:   the prompt keeps its tail (a leading BOS is kept) and the response its head.
  The prompt gets max_length - (longest response of the pair / list) tokens, but at least
  min(prompt, max_length // 2), so a very long response still sees half a window of prompt;
  the responses are then cut at their end. All responses of one example share the same
  truncated prompt.
- `skip`:       the example is dropped and counted in the report.

An example with a response that has no trained token left (nothing at position >= 1) is a
bad example: a `DataError` naming file:line:field, or with on_bad_example="skip" a counted skip.
"""

from __future__ import annotations

from typing import Any

from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Example
from alignlab.data.templates import chat_segments
from alignlab.data.tokenize import TRUNCATIONS, adds_bos, tokenize_segments
from alignlab.ops import IGNORE_INDEX

Row = dict[str, Any]


def response_segments(
    tokenizer: Any, prompt: str | list[dict[str, Any]], response: str | list[dict[str, Any]]
) -> tuple[list[tuple[str, bool]], bool]:
    """(segments, append_eos) of `prompt` followed by `response` (strings or message lists)."""
    if isinstance(response, list):
        prompt = list(prompt or [])
        return chat_segments(tokenizer, prompt + response, train_from=len(prompt)), False
    return [(prompt or "", False), (response, True)], True


def _split(ids: list[int], labels: list[int]) -> int:
    """Index of the first trained token (= the prompt's length)."""
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def _fit_group(
    sequences: list[tuple[list[int], list[int]]],
    max_length: int,
    truncation: str,
    has_bos: bool,
) -> tuple[list[Row] | None, bool]:
    """The sequences of one example (its responses, each after the same prompt) within
    max_length per `truncation`. Returns (rows or None when skipped, truncated?)."""
    longest = max(len(ids) for ids, _ in sequences)
    if not max_length or longest <= max_length:
        return [{"input_ids": ids, "labels": labels} for ids, labels in sequences], False
    if truncation == "skip":
        return None, True
    rows = []
    if truncation == "keep_start":
        for ids, labels in sequences:
            rows.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
        return rows, True
    splits = [_split(ids, labels) for ids, labels in sequences]
    longest_response = max(len(ids) - s for (ids, _), s in zip(sequences, splits))
    for (ids, labels), split in zip(sequences, splits):
        keep = 1 if has_bos and split > 0 else 0  # the BOS stays in front
        budget = max(max_length - longest_response, min(split, max_length // 2))
        tail = max(budget - keep, 0)
        start = max(split - tail, keep)
        prompt_ids, prompt_labels = (
            ids[:keep] + ids[start:split],
            labels[:keep] + labels[start:split],
        )
        room = max_length - len(prompt_ids)
        rows.append(
            {
                "input_ids": prompt_ids + ids[split:][:room],
                "labels": prompt_labels + labels[split:][:room],
            }
        )
    return rows, True


def _check_trained(row: Row, field: str, max_length: int, truncated: bool, truncation: str) -> None:
    if all(label == IGNORE_INDEX for label in row["labels"][1:]):
        if truncated:
            raise DataError(
                f"no {field} token to train on within max_length={max_length}"
                + (" (the prompt fills it)" if truncation == "keep_start" else "")
                + "; raise data.max_length, use truncation=keep_end, or on_bad_example=skip",
                field="prompt" if truncation == "keep_start" else field,
                reason=f"no trained tokens within max_length={max_length}",
            )
        raise DataError("no token to train on", field=field, reason="no trained tokens")


def _tokenize_groups(
    examples: list[Example],
    responses_of: Any,
    tokenizer: Any,
    max_length: int,
    truncation: str,
    on_bad_example: str,
    report: DataReport,
) -> list[tuple[Example, list[Row]]]:
    """For each example, `responses_of(example)` -> [(field, prompt, response)]; tokenized,
    fitted together, checked. Bad examples raise or are skipped per on_bad_example."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    report.truncation = truncation
    add_bos = adds_bos(tokenizer)
    out = []
    for example in examples:
        try:
            items = responses_of(example)
            sequences = []
            for field, prompt, response in items:
                try:
                    segments, append_eos = response_segments(tokenizer, prompt, response)
                except DataError as err:
                    raise DataError(
                        err.message, field=field if err.field in (None, "messages") else err.field,
                        reason=err.reason,
                    ) from None  # fmt: skip
                sequences.append(
                    tokenize_segments(tokenizer, segments, add_bos=add_bos, append_eos=append_eos)
                )
            has_bos = add_bos and bool(sequences[0][0])
            has_bos = has_bos and sequences[0][0][0] == tokenizer.bos_token_id
            rows, truncated = _fit_group(sequences, max_length, truncation, has_bos)
            if rows is None:
                where = example.record.where()
                report.skip(
                    f"longer than max_length={max_length}",
                    where,
                    f"{where}: longer than max_length={max_length}",
                )
                report.used -= 1
                continue
            for (field, _, _), row in zip(items, rows):
                _check_trained(row, field, max_length, truncated, truncation)
        except DataError as err:
            located = err.at(example.record)
            if on_bad_example == "error":
                raise located from None
            report.skip(located.reason, example.record.where(), str(located))
            report.used -= 1
            continue
        if truncated:
            report.truncated += 1
        out.append((example, rows))
    return out
