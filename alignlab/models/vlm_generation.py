"""Batched sampling and teacher-forced log-probs for image-text-to-text models (LLaVA, Gemma 3,
Qwen2-VL, Idefics3, ...).

    generations = generate_vlm(model, processor, prompts, images, max_new_tokens=32, temperature=0)
    logps = vlm_sequence_logps(ref_model, ref_processor, prompts, images, generations)  # (N,)

`generate_vlm` is `alignlab.models.generation.generate` for prompts with images: each prompt
(a message list whose {"type": "image"} parts take `images[i]` in order, as TRL's VLM rows)
is rendered with the processor's chat template and its generation prompt
(`render_messages(..., add_generation_prompt=True)`), tokenized as the VLM SFT data is
(`alignlab.data.vlm.encode_vlm_row`: BOS when the tokenizer adds one, the processor expanding
each image token into the model's count of image tokens) and decoded by the same loop as
text (`alignlab.models.generation.decode_prompts`): length-sorted batches, left padding, KV
cache, the model's stop tokens, a seed per batch or one per prompt. The images go into the prompt's forward only
(`decode(..., prompt_inputs=pixel_values...)`); every later step reads them from the cache.
The distribution sampled is softmax(logits / temperature) in the top-p nucleus, nothing of the
model's `generation_config` but its stop tokens, as for text, except that the image token is
never sampled (`decode(..., banned_ids=...)`): a response holding one could not be fed back
with its images (the model takes every image token for an image's place), nor re-rendered as
a TRL row. A trained VLM gives it no probability; log-probs afterwards are of the untouched
model, so a KL estimate is exact up to that mass.

A prompt without image parts is a text-only conversation; LLaVA's LLM answers it as a plain
LM (LLaVA-1.5 trains on text-only chats too), so it is generated, alone or in a batch with
image prompts. A prompt whose image parts do not match its images in number is a ValueError.

`vlm_sequence_logps` is `alignlab.models.logprobs.sequence_logps` for these prompts:
log π(y | image, x) summed over the response tokens (stop token included), the response after
the prompt as *this* processor renders it, through `alignlab.models.lm.TokenLogProbs` (the
code the recipes train through, which passes the images to the model). A KL estimate scores a
policy's samples under the policy and the reference with it.

Positions are the decode loop's (`alignlab.models.forward_inputs.prompt_positions`): the
attention mask's running count, or Qwen2-VL's 3-D rotary positions from its `get_rope_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from alignlab.data.collate import collate
from alignlab.data.templates import Messages, render_messages
from alignlab.data.tokenize import adds_bos
from alignlab.data.vlm import cat_vision, image_token_ids
from alignlab.models.forward_inputs import IMAGE_INPUTS
from alignlab.models.generation import (
    Generation,
    check_sampling,
    decode_prompts,
    inference_mode,
    length_batches,
    model_device,
    pad_token_id,
    stop_token_ids,
)
from alignlab.models.lm import TokenLogProbs
from alignlab.models.logprobs import response_rows
from alignlab.ops import masked_sum


@dataclass
class VlmPromptInputs:
    """One rendered, tokenized prompt: its text (image placeholders unexpanded), its token
    ids (image tokens expanded) and the processor's per-image tensors (pixel_values, ...)."""

    text: str
    ids: list[int]
    vision: dict[str, torch.Tensor]


def image_parts(messages: Messages) -> int:
    """How many {"type": "image"} parts the messages hold (each takes one image)."""
    return sum(
        isinstance(part, dict) and part.get("type") == "image"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def encode_vlm_prompt(
    processor: Any, messages: Messages, images: Sequence[Image.Image], index: int = 0
) -> VlmPromptInputs:
    """`messages` rendered with the generation prompt and tokenized as `encode_vlm_row`
    tokenizes a prompt segment. `index` names the prompt in errors."""
    wanted = image_parts(messages)
    if wanted != len(images):
        raise ValueError(
            f"prompt {index}: {wanted} image parts ({{'type': 'image'}}) but {len(images)} "
            "images; each image part needs one image"
        )
    tokenizer = processor.tokenizer
    text = render_messages(processor, messages, add_generation_prompt=True)
    ids: list[int] = []
    if adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
        ids.append(tokenizer.bos_token_id)
    vision: dict[str, torch.Tensor] = {}
    if images:
        out = processor(
            text=[text], images=list(images), add_special_tokens=False, return_tensors="pt"
        )
        ids += out["input_ids"][0].tolist()
        vision = {key: out[key] for key in IMAGE_INPUTS if key in out}
    else:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {index} is empty: there is nothing to generate from")
    return VlmPromptInputs(text, ids, vision)


def vision_batch(
    encoded: Sequence[VlmPromptInputs], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The per-image tensors of a batch's prompts, concatenated in row order (the model
    matches the k-th image's features to the k-th run of image tokens); floating ones in the
    model's dtype."""
    keys = [key for key in IMAGE_INPUTS if any(key in e.vision for e in encoded)]
    out = {}
    for key in keys:
        value = cat_vision([e.vision[key] for e in encoded if key in e.vision])
        out[key] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
    return out


def model_dtype(model: nn.Module) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.float32


def _check_lengths(prompts: Sequence[Messages], images: Sequence[Sequence[Any]]) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} image lists for {len(prompts)} prompts (one per prompt)")


def generate_vlm(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[Messages],
    images: Sequence[Sequence[Image.Image]],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    sampler_logps: bool = False,
) -> list[Generation]:
    """One response per prompt (a message list; `images[i]` the images of prompt i, in the
    order of its image parts), in the input order. Settings as
    `alignlab.models.generation.generate`: temperature 0 is greedy; `seeds` (one per prompt)
    make a response depend only on the model, the prompt, its images and its seed; responses
    stop at `stop_token_ids` or after max_new_tokens. `Generation.prompt_ids` hold the
    expanded image tokens; `prompt_text` the rendered prompt with its image placeholders.

    The processor's per-image tensors are made again for each batch rather than kept for all
    prompts (a 336-pixel image is 1.3 MB of float32 pixel values).
    """
    check_sampling(len(prompts), max_new_tokens, temperature, top_p, seeds)
    _check_lengths(prompts, images)
    device, dtype = model_device(model), model_dtype(model)

    def encode(i: int) -> VlmPromptInputs:
        return encode_vlm_prompt(processor, prompts[i], images[i], i)

    # token ids first (lengths), then each batch's images again, to keep memory flat
    encoded = [encode(i) for i in range(len(prompts))]
    for e in encoded:
        e.vision = {}

    def batch_inputs(members: list[int]) -> dict[str, torch.Tensor]:
        return vision_batch([encode(i) for i in members], device, dtype)

    return decode_prompts(
        model, processor.tokenizer, [e.text for e in encoded], [e.ids for e in encoded],
        max_new_tokens, temperature, top_p, batch_size, seed, seeds, sampler_logps,
        batch_inputs=batch_inputs, banned_ids=image_token_ids(processor),
    )  # fmt: skip


def vlm_sequence_logps(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[Messages],
    images: Sequence[Sequence[Image.Image]],
    generations: Sequence[Generation],
    batch_size: int = 16,
) -> torch.Tensor:
    """(N,) float32 on the CPU: log π(response_i | images_i, prompt_i) of each generation's
    response tokens (0 for an empty one) after prompt i as `processor` renders and tokenizes
    it, batched by length; the model is run in eval mode without gradients. A reference
    scores a policy's samples with its own processor (the same vocabulary is needed: the
    token ids are the policy's)."""
    _check_lengths(prompts, images)
    if len(generations) != len(prompts):
        raise ValueError(f"{len(generations)} generations for {len(prompts)} prompts")
    if not generations:
        return torch.zeros(0, dtype=torch.float32)
    encoded = [
        encode_vlm_prompt(processor, p, i, k) for k, (p, i) in enumerate(zip(prompts, images))
    ]
    lengths = [len(e.ids) + len(g.response_ids) for e, g in zip(encoded, generations)]
    for e in encoded:
        e.vision = {}
    rows = response_rows(
        [Generation(e.text, e.ids, list(g.response_ids), g.text, g.finished)
         for e, g in zip(encoded, generations)]
    )  # fmt: skip
    tokenizer = processor.tokenizer
    pad_id = pad_token_id(tokenizer, stop_token_ids(model, tokenizer))
    device, dtype = model_device(model), model_dtype(model)
    scorer = TokenLogProbs(model)
    out = torch.zeros(len(rows), dtype=torch.float32)
    with inference_mode(model):
        for members in length_batches(lengths, batch_size):
            batch = collate([rows[i] for i in members], pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            again = [encode_vlm_prompt(processor, prompts[i], images[i], i) for i in members]
            batch.update(vision_batch(again, device, dtype))
            token_logps = scorer(batch)  # (B, T)
            out[members] = masked_sum(token_logps, TokenLogProbs.mask(batch), dim=1).float().cpu()
    return out
