"""A tiny LLaVA (CLIP ViT tower + MLP projector + Llama LLM) built locally, for tests and demos.

Nothing downloads: the tokenizer is `alignlab.models.tiny.train_tokenizer` with an `<image>`
special token and `alignlab.models.vlm.default_vlm_chat_template`, the model is initialised
from a `LlavaConfig`, and the processor pairs it with a CLIP image processor on the PIL/numpy
path (torchvision does not import beside this torch build). The folder loads with
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained` as a hub
LLaVA does (Liu et al., 2023, arXiv:2304.08485).

Image tokens: the processor expands each `<image>` into (image_size / patch_size)^2 tokens
(+1 for CLS, -1 again for the "default" feature strategy, which drops CLS), which is the
number of patch features the tower gives the projector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from alignlab.fileio import atomic_folder
from alignlab.models.tiny import set_chat_stop_tokens, tiny_llama_config, train_tokenizer
from alignlab.models.vlm import IMAGE_TOKEN, default_vlm_chat_template

TEXTS = [
    "What shape is in the picture? A red circle.",
    "What colour is the square? The square is blue.",
    "Describe the image. A green triangle on a white background.",
    "How many shapes are there? There are two shapes.",
]


def tiny_vlm_tokenizer(texts: list[str] | None = None, vocab_size: int = 300) -> Any:
    """`train_tokenizer` on `texts` with `<image>` added as a special token and the image-aware
    ChatML template."""
    tokenizer: PreTrainedTokenizerFast = train_tokenizer(texts or TEXTS, vocab_size=vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = default_vlm_chat_template(tokenizer)
    return tokenizer


def tiny_llava(
    tokenizer: Any = None,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    text_hidden: int = 32,
    text_layers: int = 2,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """(model, processor): a LLaVA initialised for `tokenizer` (default
    `tiny_vlm_tokenizer()`, which must have `<image>` as one token) and its processor."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    tokenizer = tokenizer or tiny_vlm_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token")
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = tiny_llama_config(
        len(tokenizer), hidden_size=text_hidden, num_layers=text_layers, num_heads=4
    )
    text.bos_token_id = tokenizer.bos_token_id
    text.eos_token_id = tokenizer.eos_token_id
    text.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
        vision_feature_layer=-1,  # a 2-layer tower: its last layer (LLaVA uses the second last)
        projector_hidden_act="gelu",
        tie_word_embeddings=text.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    set_chat_stop_tokens(model, tokenizer)
    return model, llava_processor(tokenizer, image_size, patch_size)


def clip_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP's preprocessing (resize, centre crop, CLIP mean / std) to `image_size` square."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def llava_processor(tokenizer: Any, image_size: int, patch_size: int) -> LlavaProcessor:
    """The processor of a LLaVA with a CLIP tower of `image_size` / `patch_size` whose
    "default" feature strategy drops CLS: one `<image>` becomes one token per patch."""
    return LlavaProcessor(
        image_processor=clip_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" then drops
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )


def save_vlm(out_dir: str | Path, model: Any, processor: Any) -> Path:
    """Save `model` (safetensors) and `processor` as one HF folder, atomically."""
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out_dir)


def build_tiny_llava(out_dir: str | Path, tokenizer: Any = None, **kwargs: Any) -> Path:
    """`tiny_llava(tokenizer, **kwargs)` saved as a folder that `AutoModelForImageTextToText`
    and `AutoProcessor` load with no extra step."""
    return save_vlm(out_dir, *tiny_llava(tokenizer, **kwargs))


def image_token_count(image_size: int = 64, patch_size: int = 8) -> int:
    """Image tokens per image of `build_tiny_llava` (one per patch)."""
    return (image_size // patch_size) ** 2
