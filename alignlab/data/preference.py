"""Preference data -> token ids and labels: pairs, unpaired (KTO), ranked lists, Chain of Hindsight.

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

import json
import logging
import random
from typing import Any

import torch

from alignlab.config import DataConfig
from alignlab.data.collate import collate, pack_examples
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Example, detect_dataset_format, parse_examples
from alignlab.data.sources import load_records
from alignlab.data.templates import chat_segments
from alignlab.data.tokenize import TRUNCATIONS, adds_bos, tokenize_segments, tokenize_sft
from alignlab.data.win_rate import ranked_by_win_rate, unpaired_by_win_rate
from alignlab.ops import IGNORE_INDEX

logger = logging.getLogger(__name__)

Row = dict[str, Any]
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

POSITIVE = "A helpful answer:"
NEGATIVE = "An unhelpful answer:"


# --- one response: segments, tokens, split at the first trained token ---


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


# --- pairs (DPO, IPO, SLiC, ORPO, SimPO) ---


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


# --- unpaired (KTO) ---


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
        report.used += len(examples)  # each pair is two examples now
        examples = pairs_to_unpaired(examples)
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


# --- ranked lists (RRHF) ---


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


# --- Chain of Hindsight ---


def _after(phrase: str, response: str) -> str:
    return phrase + ("" if response[:1].isspace() else " ") + response


def _with_phrase(prompt: str | list[dict[str, Any]], phrase: str) -> Any:
    """`prompt` ending with a feedback phrase: a string gets "\\n" + phrase (just the phrase
    when empty); a message list gets the phrase appended to its last user message after a
    blank line (or a user message holding the phrase when there is none at the end)."""
    if isinstance(prompt, list):
        messages = [dict(m) for m in prompt]
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{phrase}"
        else:
            messages.append({"role": "user", "content": phrase})
        return messages
    prompt = prompt or ""
    return f"{prompt}\n{phrase}" if prompt and not prompt.endswith("\n") else prompt + phrase


def hindsight_prompt(prompt: str | list[dict[str, Any]], positive: str = POSITIVE) -> Any:
    """What to condition a Chain-of-Hindsight model on at inference: the prompt followed by
    the positive feedback phrase (see `chain_of_hindsight` for the training template)."""
    return _with_phrase(prompt, positive)


HINDSIGHT_TEMPLATE_MARK = "{#- alignlab: Chain-of-Hindsight conditioning -#}"


def hindsight_chat_template(template: str, positive: str = POSITIVE) -> str:
    """`template` (Jinja) rendering a generation prompt as `hindsight_prompt(messages)`: with
    add_generation_prompt, the phrase goes after a blank line at the end of the last user
    message (or in a user message of its own), exactly as in training; other renders are
    unchanged. Saved with a CoH model, so chat inference conditions on the positive feedback.
    A template that already has it is returned unchanged."""
    if HINDSIGHT_TEMPLATE_MARK in template:
        return template
    phrase = json.dumps(positive, ensure_ascii=False)  # a valid Jinja string literal
    return (
        HINDSIGHT_TEMPLATE_MARK
        + "{%- if add_generation_prompt is defined and add_generation_prompt -%}"
        + "{%- if messages and messages[-1]['role'] == 'user' "
        + "and messages[-1]['content'] is string -%}"
        + "{%- set messages = messages[:-1] + [{'role': 'user', 'content': "
        + f"messages[-1]['content'] ~ '\\n\\n' ~ {phrase}}}] -%}}"
        + "{%- else -%}"
        + f"{{%- set messages = messages + [{{'role': 'user', 'content': {phrase}}}] -%}}"
        + "{%- endif -%}{%- endif -%}"
        + template
    )


def chain_of_hindsight(
    examples: list[Example],
    positive: str = POSITIVE,
    negative: str = NEGATIVE,
    order: str = "random",
    seed: int = 0,
) -> list[Example]:
    """Chain of Hindsight (Liu et al. 2023, arXiv:2302.02676): preference pairs as
    feedback-annotated SFT (prompt_completion or conversational) examples.

    Each pair (x, y_w, y_l) becomes the sequence

        x \\n <first phrase> <first response> \\n <second phrase> <second response>

    with positive = "A helpful answer:" before y_w and negative = "An unhelpful answer:" before
    y_l; the loss is on the two responses only (never on x or the phrases). It is written as
    two prompt-completion examples, the first a prefix of the second, so the standard SFT
    tokenization applies unchanged:

        prompt  = x \\n P1              completion = " " R1   (+ EOS)
        prompt  = x \\n P1 R1 \\n P2     completion = " " R2   (+ EOS)

    For message lists, the phrase P1 is appended to the last user message (after a blank
    line), R1 is an assistant turn, and P2 is a user message of its own.

    `order`: "random" (the paper: each pair's order drawn with `seed`), "positive_first",
    "negative_first", or "both" (four examples per pair). At inference condition on
    `hindsight_prompt(x)` = x \\n "A helpful answer:", exactly the prompt of a
    positive-first example.
    """
    if order not in ("random", "positive_first", "negative_first", "both"):
        raise ValueError(f"unknown order {order!r}")
    rng = random.Random(seed)
    out = []
    for example in examples:
        positive_first = rng.random() < 0.5 if order == "random" else order != "negative_first"
        orders = [True, False] if order == "both" else [positive_first]
        for first_is_positive in orders:
            sides = [(positive, example.chosen), (negative, example.rejected)]
            if not first_is_positive:
                sides.reverse()
            (p1, r1), (p2, r2) = sides
            prompt = example.prompt
            if isinstance(r1, list):
                first_prompt = _with_phrase(list(prompt or []), p1)
                second_prompt = first_prompt + r1 + [{"role": "user", "content": p2}]
                completions = (r1, r2)
            else:
                first_prompt = _with_phrase(prompt, p1)
                second_prompt = f"{_with_phrase(prompt, _after(p1, r1))}\n{p2}"
                completions = tuple(r if r[:1].isspace() else " " + r for r in (r1, r2))
            for p, c in zip((first_prompt, second_prompt), completions):
                out.append(Example(prompt=p, completion=c, record=example.record))
    return out


# --- whole datasets ---


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
        examples = convert(examples)
        report.used = len(examples)
    args = (tokenizer, cfg.max_length, cfg.truncation, cfg.on_bad_example, report)
    if kind == "pairs":
        rows = tokenize_pairs(examples, fmt, *args)
    elif kind == "unpaired":
        rows = tokenize_unpaired(examples, fmt, *args)
    elif kind == "ranked":
        rows = tokenize_ranked(examples, fmt, *args)
    else:
        annotated = chain_of_hindsight(examples, **(hindsight or {}))
        report.used += len(annotated) - len(examples)
        sft_fmt = (
            "conversational" if annotated and annotated[0].conversational else "prompt_completion"
        )
        rows = tokenize_sft(
            annotated, sft_fmt, tokenizer, cfg.max_length, cfg.truncation,
            cfg.completion_only_loss, cfg.on_bad_example, report,
        )  # fmt: skip
        if cfg.packing and rows:
            rows = pack_examples(rows, cfg.max_length)
            report.packed_rows = len(rows)
            report.packed_length = cfg.max_length
    if not rows:
        raise DataError(f"no usable examples: {report.summary()}", source)
    logger.info("%s: %s", source, report.summary())
    return rows, report
