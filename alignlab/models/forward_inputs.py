"""What a model's forward is given beside the token ids, for text and image-text-to-text models.

A text batch passes its ids, attention mask and (packed) positions. An image-text-to-text model
also takes the processor's per-image tensors (`IMAGE_INPUTS`) and, in some families, inputs
per token that say which tokens are an image's:
- Gemma 3 reads `token_type_ids` (1 on image tokens) to let an image's tokens attend to each
  other both ways;
- Qwen2-VL (and its successors) reads `mm_token_type_ids` to build its 3-D rotary positions
  (M-RoPE, Wang et al. 2024, arXiv:2409.12191): an image's tokens take (time, row, column)
  positions on its patch grid, and the text after it continues from the largest.
Both follow from the ids and the model's image token, so `token_type_inputs` makes them from
the model at forward time: a batch needs only ids and images, and the collate functions stay
the same for every family.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache as memoize

import torch
from torch import nn

from alignlab.models.loading import unwrap_peft

IMAGE_INPUTS = ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask")
"""Processor outputs an image-text-to-text model takes beside the tokens (LLaVA, LLaVA-NeXT,
Qwen2-VL, Idefics, Gemma 3); a batch passes on those it has."""

TOKEN_INPUTS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "token_type_ids",
    "mm_token_type_ids",
)


@memoize
def forward_arguments(model_class: type) -> frozenset[str]:
    """The keyword arguments of `model_class.forward` (memoized: inspect is slow per step)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def image_token_of(config: object) -> int | None:
    """The id of the token an image's features replace, from a VLM's config (LLaVA names it
    `image_token_index`, most others `image_token_id`); None for a text model."""
    if getattr(config, "vision_config", None) is None:
        return None
    found = getattr(config, "image_token_id", None)
    if found is None:
        found = getattr(config, "image_token_index", None)
    return None if found is None else int(found)


def token_type_inputs(model: nn.Module, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-token type ids `model`'s forward takes (see the module docstring), 1 on its
    image token, else 0; {} for a model that takes none (LLaVA, any text model)."""
    hf_model = unwrap_peft(model)
    image_id = image_token_of(hf_model.config)
    if image_id is None:
        return {}
    arguments = forward_arguments(type(hf_model))
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in arguments:
            return {key: (input_ids == image_id).to(torch.long)}
    return {}


def model_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of `batch` `model`'s forward takes (not labels, not a recipe's extras), with
    the token types it reads made from the ids when the batch has none."""
    inputs = {k: batch[k] for k in TOKEN_INPUTS + IMAGE_INPUTS if batch.get(k) is not None}
    if "attention_mask" in inputs and has_3d_positions(model):
        # an unpacked row's 1-D positions (the text collate's 0, 1, ...) would override the
        # model's own (time, row, column) ones, which it builds from the ids and image grids
        inputs.pop("position_ids", None)
    if "input_ids" in inputs:
        for key, value in token_type_inputs(model, inputs["input_ids"]).items():
            inputs.setdefault(key, value)
    return inputs


def has_3d_positions(model: nn.Module) -> bool:
    """Whether `model` builds M-RoPE positions (its base model has `get_rope_index`)."""
    body = getattr(unwrap_peft(model), "model", None)
    return body is not None and hasattr(body, "get_rope_index")


def prompt_positions(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Rotary positions of a left-padded prompt batch (`inputs`: `model_inputs` of it): the
    attention mask's running count, (B, T), or for a model with 3-D rotary positions its own
    `get_rope_index` over the ids, image grids and mask, (3, B, T). Either way a token
    generated after the prompt takes the last position plus one (text after an image
    continues from the image's largest position, in all three axes)."""
    attention_mask = inputs["attention_mask"]
    if has_3d_positions(model) and "mm_token_type_ids" in inputs:
        positions, _ = unwrap_peft(model).model.get_rope_index(
            input_ids=inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=attention_mask,
        )
        return positions
    return (attention_mask.cumsum(1) - 1).clamp(min=0)
