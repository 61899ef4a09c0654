"""Batched sampling and teacher-forced log-probs for image-text-to-text models (LLaVA family).

    generations = generate_vlm(model, processor, prompts, images, max_new_tokens=32, temperature=0)
    logps = vlm_sequence_logps(ref_model, ref_processor, prompts, images, generations)  # (N,)

`generate_vlm` is `alignlab.models.generation.generate` for prompts with images: each prompt
(a message list whose {"type": "image"} parts take `images[i]` in order, as TRL's VLM rows)
is rendered with the processor's chat template and its generation prompt
(`render_messages(..., add_generation_prompt=True)`), tokenized as the VLM SFT data is
(`alignlab.data.vlm.encode_vlm_row`: BOS when the tokenizer adds one, the processor expanding
each image token into the model's count of image tokens) and decoded by the same loop
(`alignlab.models.decode.decode`): length-sorted batches, left padding, KV cache, the model's
stop tokens, a seed per batch or one per prompt. The images go into the prompt's forward only
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

Positions are 1-D (the attention mask's running count): LLaVA, LLaVA-NeXT and other models
whose decoder has ordinary rotary positions. Qwen2-VL's 3-D rotary positions are not built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from alignlab.data.collate import collate
from alignlab.data.templates import Messages, render_messages
from alignlab.data.tokenize import adds_bos
from alignlab.data.vlm import image_token_id
from alignlab.models.decode import decode
from alignlab.models.generation import (
    Generation,
    inference_mode,
    left_padded,
    length_batches,
    model_device,
    pad_token_id,
    row_uniforms,
    stop_token_ids,
)
from alignlab.models.lm import IMAGE_INPUTS, TokenLogProbs
from alignlab.models.logprobs import response_rows
from alignlab.ops import masked_sum

logger = logging.getLogger(__name__)


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
        value = torch.cat([e.vision[key] for e in encoded if key in e.vision])
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
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    _check_lengths(prompts, images)
    tokenizer = processor.tokenizer
    stop_ids = stop_token_ids(model, tokenizer)
    stop_set = set(stop_ids)
    pad_id = pad_token_id(tokenizer, stop_ids)
    banned = {image_token_id(processor)}
    device, dtype = model_device(model), model_dtype(model)

    def encode(i: int) -> VlmPromptInputs:
        return encode_vlm_prompt(processor, prompts[i], images[i], i)

    # lengths first (token ids only), then each batch's images again, to keep memory flat
    encoded = [encode(i) for i in range(len(prompts))]
    lengths = [len(e.ids) for e in encoded]
    for e in encoded:
        e.vision = {}
    results: list[Generation | None] = [None] * len(prompts)
    batches = length_batches(lengths, batch_size)
    with inference_mode(model):
        for batch_index, members in enumerate(batches):
            batch = [encode(i) for i in members]
            input_ids, attention_mask = left_padded([e.ids for e in batch], pad_id)
            uniforms = None
            if seeds is not None:
                uniforms = torch.stack([row_uniforms(seeds[i], max_new_tokens) for i in members])
            else:
                torch.manual_seed(seed + batch_index)
            recorded = [[] for _ in members] if sampler_logps else None
            new_tokens, finished = decode(
                model,
                input_ids.to(device),
                attention_mask.to(device),
                max_new_tokens,
                temperature,
                top_p,
                stop_set,
                uniforms,
                sampler_logps=recorded,
                prompt_inputs=vision_batch(batch, device, dtype),
                banned_ids=banned,
            )
            for row, i in enumerate(members):
                response = new_tokens[row]
                shown = response[:-1] if finished[row] else response
                results[i] = Generation(
                    prompt_text=encoded[i].text,
                    prompt_ids=list(encoded[i].ids),
                    response_ids=response,
                    text=tokenizer.decode(shown, skip_special_tokens=False),
                    finished=finished[row],
                    sampler_logps=recorded[row] if recorded is not None else None,
                )
            logger.debug("generated batch %d/%d", batch_index + 1, len(batches))
    return [result for result in results if result is not None]


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
