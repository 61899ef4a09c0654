"""Prompt rows for the RL and sampling recipes: a `prompt` (string or message list) per record,
the record's other keys passed to reward functions as extras, and a check, before any
sampling, that prompts plus the response budget fit the model's positions.

A record with `images` (TRL's vision prompt rows: image paths, relative to the data file or
absolute, one per {"type": "image"} part of the prompt) keeps them resolved in
`PromptRow.images`, and its extras' `images` become the absolute paths (the bytes of an
inline image, `{"bytes": ...}`), so a reward function (a vision reward model, a gold that
reads the image) can open them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from PIL import Image

from alignlab.config import ModelConfig
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Record
from alignlab.data.sources import load_records
from alignlab.data.templates import render_prompt
from alignlab.data.vlm import (
    ImageSource,
    check_messages,
    image_parts,
    load_image_files,
    resolve_images,
)
from alignlab.models.generation import prompt_token_ids
from alignlab.models.loading import check_positions
from alignlab.rl.config import PromptDataConfig


@dataclasses.dataclass
class PromptRow:
    prompt: str | list[dict[str, Any]]
    extras: dict[str, Any]
    images: list[ImageSource] = dataclasses.field(default_factory=list)
    record: Record | None = None

    def load_images(self) -> list[Image.Image]:
        """The prompt's images (RGB); a file PIL cannot read is a DataError on its field."""
        return load_image_files(self.images, self.record) if self.images else []


def check_generation_fits(
    model_cfg: ModelConfig,
    tokenizer: Any,
    rows: list[PromptRow],
    setting: str,
    new_tokens: int,
    prompt_length: Callable[[PromptRow], int] | None = None,
) -> None:
    """Refuse, before any sampling, prompts + `new_tokens` longer than the model's positions.
    `prompt_length(row)`: the prompt's tokens (default: its rendering by `tokenizer`; a
    vision-language run counts the image tokens its processor expands)."""
    if prompt_length is None:

        def prompt_length(row: PromptRow) -> int:
            return len(prompt_token_ids(tokenizer, render_prompt(tokenizer, row.prompt)))

    longest_prompt = max((prompt_length(r) for r in rows), default=0)
    check_positions(
        model_cfg, longest_prompt + new_tokens,
        f"{setting}={new_tokens} after prompts of up to {longest_prompt} tokens",
        f"lower {setting}, or drop long prompts with data.max_prompt_tokens",
    )  # fmt: skip


def load_prompt_rows(
    cfg: PromptDataConfig, tokenizer: Any, report: DataReport | None = None
) -> list[PromptRow]:
    """Rows with a non-empty `prompt` (string or message list); other keys become extras."""
    report = report or DataReport()
    records = load_records(
        cfg.path, cfg.split, cfg.max_examples, on_bad_example=cfg.on_bad_example, report=report
    )
    rows = []
    for record in records:
        prompt = record.data.get("prompt")
        ok = (isinstance(prompt, str) and prompt.strip()) or (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
        )
        if not ok:
            error = DataError(
                "expected a non-empty 'prompt': a string or a list of {role, content} messages",
                record.source,
                record.line,
                field="prompt",
            )
            if cfg.on_bad_example == "error":
                raise error
            report.skip("bad prompt", record.where(), str(error))
            continue
        if cfg.max_prompt_tokens:
            length = len(prompt_token_ids(tokenizer, render_prompt(tokenizer, prompt)))
            if length > cfg.max_prompt_tokens:
                report.skip("prompt too long", record.where())
                continue
        extras = {k: v for k, v in record.data.items() if k != "prompt"}
        images: list[ImageSource] = []
        if "images" in record.data:
            parts = 0
            if isinstance(prompt, list):  # image parts well formed, or an error on their field
                parts = sum(image_parts(m) for m in check_messages(record, "prompt"))
            images = resolve_images(record, parts)
            extras["images"] = [  # inline images reach the reward as their bytes
                image if isinstance(image, bytes) else str(image.resolve()) for image in images
            ]
        rows.append(PromptRow(prompt, extras, images, record))
    if not rows:
        raise DataError("no usable prompts", cfg.path)
    return rows
