"""Vision-language SFT data: TRL's image-conversation rows, read, checked and collated.

A row (TRL's VLM format):
    {"images": ["images/train_00000.png"],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}]}
Image paths are relative to the JSONL file's folder (or absolute); the k-th {"type": "image"}
part, in message order, is the k-th image. A content may also be a plain string.

`collate_vlm` renders each conversation with the processor's chat template, runs the
processor (which expands each image token into the model's count of image tokens and makes
the pixel values) and trains, as the LLaVA paper does (Liu et al., 2023, arXiv:2304.08485),
only the assistant turns: labels are -100 on every other token, on image tokens and on
padding. The assistant spans are found as for text chats (`alignlab.data.templates`).

Truncation keeps the start and never cuts image tokens: a row longer than `max_length` loses
its end, and one whose kept part cannot hold all its image tokens plus one trained token is
a DataError with the numbers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from alignlab.data.report import DataReport
from alignlab.data.schema import ROLES, DataError, Record
from alignlab.data.sources import load_records
from alignlab.data.templates import locate_turn, render_messages, special_token_pattern
from alignlab.data.tokenize import adds_bos
from alignlab.ops import IGNORE_INDEX

ImageSource = Path | bytes
"""An image of a row: a file, or its encoded bytes when the data holds it inline."""

T = TypeVar("T")
U = TypeVar("U")

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Processor outputs per token; every other output (pixel_values, image_sizes) is per image."""


@dataclass(frozen=True)
class VlmRow:
    """One checked row: its messages and its images (resolved paths or inline bytes), in
    order."""

    messages: list[dict[str, Any]]
    images: list[ImageSource]
    record: Record


# --- reading ---


def read_vlm_rows(
    path: str | Path,
    max_records: int = 0,
    on_bad_example: str = "error",
    report: DataReport | None = None,
) -> list[VlmRow]:
    """The rows of a TRL-format VLM JSONL (or JSON / parquet) file, each checked
    (`check_vlm_row`): a bad one (or a malformed line) is a DataError naming the file, the
    line and the field, or with on_bad_example="skip" left out and counted in `report`."""
    return read_checked(path, check_vlm_row, max_records, on_bad_example, report)


def read_checked(
    path: str | Path,
    check: Callable[[Record], U],
    max_records: int,
    on_bad_example: str,
    report: DataReport | None,
) -> list[U]:
    """`check(record)` of each record of a local file (`load_records`), every record counted
    in `report`, bad ones handled by `keep_good`."""
    records = load_records(
        str(path), max_records=max_records, on_bad_example=on_bad_example, report=report
    )
    if report is not None:
        report.records += len(records)  # load_records counts only the lines it skipped
    return keep_good(records, check, on_bad_example, report)


def keep_good(
    items: Iterable[T],
    make: Callable[[T], U],
    on_bad_example: str,
    report: DataReport | None = None,
) -> list[U]:
    """`make(item)` of each item; one that raises a DataError stops the run
    (on_bad_example="error") or is left out, its reason and place counted in `report`."""
    out = []
    for item in items:
        try:
            out.append(make(item))
        except DataError as err:
            if on_bad_example == "error" or report is None:
                raise
            report.skip(err.reason, f"{err.source}:{err.line}", str(err))
    return out


def check_vlm_row(record: Record) -> VlmRow:
    messages = check_messages(record, "messages")
    parts = sum(image_parts(m) for m in messages)
    return VlmRow(messages=messages, images=resolve_images(record, parts), record=record)


def check_messages(record: Record, field: str) -> list[dict[str, Any]]:
    """`record.data[field]`, checked to be a non-empty list of well-formed messages."""
    messages = record.data.get(field)
    if not isinstance(messages, list) or not messages:
        raise DataError("needs a non-empty list of messages", field=field).at(record)
    for i, message in enumerate(messages):
        _check_message(message, f"{field}[{i}]", record)
    return messages


def image_parts(message: dict[str, Any]) -> int:
    content = message["content"]
    return 0 if isinstance(content, str) else sum(p["type"] == "image" for p in content)


def resolve_images(record: Record, parts: int) -> list[ImageSource]:
    """The record's `images`, one per image part: paths resolved against its file's folder,
    inline images (`{"bytes": ...}` as a Parquet file written by `datasets` holds them, or PIL
    images) as their encoded bytes. A missing file, an entry of another kind or a count that
    does not match is a DataError on `images`."""
    images = record.data.get("images", [])
    if not isinstance(images, list):
        raise DataError("must be a list of images (paths or {'bytes': ...})", field="images").at(
            record
        )
    if parts != len(images):
        raise DataError(
            f"{len(images)} images for {parts} image parts ({{'type': 'image'}}) in the "
            "messages; each image part needs one image",
            field="images",
            reason="image count mismatch",
        ).at(record)
    folder = Path(record.source).expanduser().parent
    resolved: list[ImageSource] = []
    for k, item in enumerate(images):
        if isinstance(item, Image.Image):
            buffer = io.BytesIO()
            item.save(buffer, format="PNG")
            resolved.append(buffer.getvalue())
            continue
        inline = item.get("bytes") if isinstance(item, dict) else item
        if isinstance(inline, bytes) and inline:
            resolved.append(inline)
            continue
        name = item.get("path") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            raise DataError(
                "must be an image path, {'bytes': ...} or {'path': ...}", field=f"images[{k}]"
            ).at(record)
        file = Path(name).expanduser()
        file = file if file.is_absolute() else folder / file
        if not file.is_file():
            raise DataError(
                f"no such image file: {file}", field=f"images[{k}]", reason="missing image"
            ).at(record)
        resolved.append(file)
    return resolved


def _check_message(message: Any, field: str, record: Record) -> None:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise DataError(f"needs a 'role', one of {', '.join(ROLES)}", field=field).at(record)
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise DataError("must be a string or a list of parts", field=f"{field}.content").at(record)
    for j, part in enumerate(content):
        where = f"{field}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind != "image":
            raise DataError(
                "a part must be {'type': 'image'} or {'type': 'text', 'text': str}", field=where
            ).at(record)
        if message["role"] == "assistant":
            raise DataError("images in assistant turns are not supported", field=where).at(record)


def load_images(row: VlmRow) -> list[Image.Image]:
    """The row's images as RGB PIL images; one PIL cannot read is a DataError on its field."""
    return load_image_files(row.images, row.record)


def load_image_files(files: list[ImageSource], record: Record) -> list[Image.Image]:
    """`files` (the `images` of `record`: paths or encoded bytes) as RGB PIL images; a
    DataError on `images[k]` for one PIL cannot read."""
    images = []
    for k, file in enumerate(files):
        source = io.BytesIO(file) if isinstance(file, bytes) else file
        try:
            with Image.open(source) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            name = "the inline image" if isinstance(file, bytes) else f"the image {file}"
            raise DataError(
                f"cannot read {name}: {err}", field=f"images[{k}]", reason="bad image"
            ).at(record) from err
    return images


# --- encoding ---


def _content_text(message: dict[str, Any]) -> str:
    """The text an assistant turn's span is found by: its last text part (templates may put
    separators between parts, so the parts joined need not appear in the rendering)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    texts = [part["text"] for part in content if part.get("type") == "text"]
    return texts[-1] if texts else ""


def vlm_segments(
    processor: Any, messages: list[dict[str, Any]], completion_only: bool = True
) -> list[tuple[str, bool]]:
    """The rendered conversation as [(text, trained?)]: assistant turns from the end of their
    generation prompt through their end-of-turn marker, as `templates.chat_segments` does
    for text chats (the whole text when not `completion_only`)."""
    full = render_messages(processor, messages)
    if not completion_only:
        return [(full, True)]
    markers = special_token_pattern(processor.tokenizer)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_messages(processor, messages[:i], True) if i else ""
        after = render_messages(processor, messages[: i + 1])
        start, end = locate_turn(full, before, after, _content_text(message), cursor, i, markers)
        segments += [(full[cursor:start], False), (full[start:end], True)]
        cursor = end
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text]


IMAGE_TOKEN_ATTRIBUTES = (
    "image_token",  # the placeholder the processor expands (Gemma 3: its begin-of-image token)
    "boi_token",  # Gemma 3: an image's tokens are <start_of_image> soft tokens <end_of_image>
    "eoi_token",
    "fake_image_token",  # Idefics3: <fake_token_around_image> <global-img> ... around them
    "global_image_tag",
    "vision_start_token",  # Qwen2-VL: <|vision_start|> <|image_pad|>... <|vision_end|>
    "vision_end_token",
)


def image_token_ids(processor: Any) -> frozenset[int]:
    """The ids of the tokens an image expands into (the model's image token and the markers
    some families put around it), on the processor or its tokenizer: never trained, never
    cut by truncation, never sampled."""
    tokenizer = processor.tokenizer
    ids = set()
    for owner in (processor, tokenizer):
        for name in IMAGE_TOKEN_ATTRIBUTES:
            token = getattr(owner, name, None)
            if isinstance(token, str) and token:
                found = tokenizer.convert_tokens_to_ids(token)
                if found is not None and found != tokenizer.unk_token_id:
                    ids.add(int(found))
    found = getattr(processor, "image_token_id", None)
    if found is not None:
        ids.add(int(found))
    if not ids:
        raise ValueError(f"{type(processor).__name__} names no image token")
    return frozenset(ids)


def cat_vision(values: list[torch.Tensor]) -> torch.Tensor:
    """Per-image processor outputs of several calls as one batch along dim 0. Where their
    other dims differ (Idefics3's (1, images, C, H, W) with another image count, LLaVA-NeXT's
    patch count), each is zero-padded to the largest first: the models drop all-zero images
    and patches, as they do for the padding their processors add."""
    widest = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        pad: list[int] = []
        for d in reversed(range(1, value.dim())):
            pad += [0, widest[d - 1] - value.shape[d]]
        padded.append(torch.nn.functional.pad(value, pad) if any(pad) else value)
    return torch.cat(padded)


def encode_vlm_row(
    row: VlmRow, processor: Any, max_length: int, completion_only: bool = True
) -> dict[str, Any]:
    """{"input_ids", "labels": list[int], "vision": {key: tensor}} of one row, truncated to
    `max_length` (see the module docstring). Each segment is tokenized on its own (as text
    SFT does), through the processor where it holds image tokens."""
    try:
        segments = vlm_segments(processor, row.messages, completion_only)
    except DataError as err:
        raise err.at(row.record) from None
    images = load_images(row)
    tokenizer = processor.tokenizer
    image_token = processor.image_token
    ids: list[int] = []
    labels: list[int] = []
    vision: dict[str, list[torch.Tensor]] = {}
    if adds_bos(tokenizer) and not segments[0][0].startswith(tokenizer.bos_token):
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    used = 0
    for text, trained in segments:
        count = text.count(image_token)
        if count:
            out = processor(
                text=[text],
                images=images[used : used + count],
                add_special_tokens=False,
                return_tensors="pt",
            )
            used += count
            piece = out["input_ids"][0].tolist()
            for key, value in out.items():
                if key not in TEXT_KEYS:
                    vision.setdefault(key, []).append(value)
        else:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    image_ids = image_token_ids(processor)
    labels = [IGNORE_INDEX if t in image_ids else label for t, label in zip(ids, labels)]
    ids, labels = _truncate(ids, labels, image_ids, max_length, row.record)
    return {
        "input_ids": ids,
        "labels": labels,
        "vision": {key: cat_vision(values) for key, values in vision.items()},
    }


def _truncate(
    ids: list[int], labels: list[int], image_ids: frozenset[int], max_length: int, record: Record
) -> tuple[list[int], list[int]]:
    """Keep the first `max_length` tokens, if those hold every image token and at least one
    trained token."""
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not trained:
        raise DataError(
            "no token to train: the row has no assistant turn (or only empty ones)",
            field="messages",
            reason="nothing to train",
        ).at(record)
    if len(ids) <= max_length:
        return ids, labels
    image_end = max((i + 1 for i, t in enumerate(ids) if t in image_ids), default=0)
    if image_end > max_length or trained[0] >= max_length:
        raise DataError(
            f"{len(ids)} tokens, max_length={max_length}: the kept start cannot hold its "
            f"image tokens (they end at token {image_end}) plus one trained token (the first "
            f"is token {trained[0] + 1}); raise max_length or shorten the prompt",
            field="messages",
            reason="too long for its image tokens",
        ).at(record)
    return ids[:max_length], labels[:max_length]


def collate_vlm(
    rows: list[VlmRow], processor: Any, max_length: int, completion_only: bool = True
) -> dict[str, torch.Tensor]:
    """A padded batch: input_ids, attention_mask, labels (B, T), padded on the tokenizer's
    padding side, and the processor's per-image outputs (pixel_values (n_images, C, H, W),
    ...) of all rows' images in order, when there are any."""
    tokenizer = processor.tokenizer
    encoded = [encode_vlm_row(row, processor, max_length, completion_only) for row in rows]
    width = max(len(e["input_ids"]) for e in encoded)
    left = tokenizer.padding_side == "left"
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in encoded:
        n = width - len(e["input_ids"])
        for key, values, fill in (
            ("input_ids", e["input_ids"], tokenizer.pad_token_id),
            ("attention_mask", [1] * len(e["input_ids"]), 0),
            ("labels", e["labels"], IGNORE_INDEX),
        ):
            batch[key].append([fill] * n + values if left else values + [fill] * n)
    out = {key: torch.tensor(values, dtype=torch.long) for key, values in batch.items()}
    for key in {key for e in encoded for key in e["vision"]}:
        out[key] = cat_vision([e["vision"][key] for e in encoded if key in e["vision"]])
    return out
