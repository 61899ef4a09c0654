"""Tiny text-to-image pipelines built from configs, for tests and the lab: nothing downloads.

- `tiny_pixel_pipeline`: DeepFloyd IF's layout (Saharia-style pixel-space cascade, stage I
  alone): a T5 encoder and a UNet2DConditionModel on 3-channel pixels that predicts the noise
  and its variance range (6 channels out), a DDPM scheduler. This is the lab's generator.
- `tiny_latent_pipeline`: Stable Diffusion's layout: a CLIP text encoder, a VAE (8 x 8 pixel
  blocks to a 4-channel latent halved in size) and a UNet on the latent.

The tokenizer is the lab's byte-level BPE (`alignlab.models.tiny.train_tokenizer`), capped at
77 tokens as both pipelines pad prompts. Saved with `save_pipeline`, each folder loads with
`DiffusionPipeline.from_pretrained` as its hub counterpart does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignlab.fileio import atomic_folder
from alignlab.models.tiny import train_tokenizer

PROMPT_TOKENS = 77
TEXTS = ["a large red circle in the top left", "two small blue squares", "a green star"]


def prompt_tokenizer(texts: list[str] | None = None, vocab_size: int = 300) -> Any:
    tokenizer = train_tokenizer(texts or TEXTS, vocab_size=vocab_size)
    tokenizer.model_max_length = PROMPT_TOKENS
    return tokenizer


def _unet(sample_size: int, channels: int, out_channels: int, width: int, text_dim: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=out_channels,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_pixel_pipeline(
    tokenizer: Any = None, image_size: int = 32, width: int = 32, text_dim: int = 32, seed: int = 0
) -> Any:
    """An `IFPipeline` (see the module docstring) at `image_size` pixels."""
    from diffusers import DDPMScheduler, IFPipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer = tokenizer or prompt_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim,
                 num_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id)
    )  # fmt: skip
    unet = _unet(image_size, 3, 6, width, text_dim)
    # IF's UNet predicts its variance too (out channels 3:6, "learned_range"). A loss on the
    # noise alone never trains those channels, and random ones push the sampler's variance
    # far outside [β̃_t, β_t]: images come out as noise. Zero, they stay zero (no gradient
    # reaches them) and the sampler uses the range's geometric middle.
    with torch.no_grad():
        unet.conv_out.weight[3:].zero_()
        unet.conv_out.bias[3:].zero_()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, variance_type="learned_range", clip_sample=True
    )
    return IFPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, watermarker=None,
        requires_safety_checker=False,
    )  # fmt: skip


def tiny_latent_pipeline(
    tokenizer: Any = None, image_size: int = 32, width: int = 32, text_dim: int = 32, seed: int = 0
) -> Any:
    """A `StableDiffusionPipeline` (see the module docstring) at `image_size` pixels."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tokenizer or prompt_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=text_dim,
                       intermediate_size=2 * text_dim, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=PROMPT_TOKENS, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(width, width),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=image_size,
    )  # fmt: skip
    unet = _unet(image_size // 2, 4, 4, width, text_dim)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDPMScheduler(num_train_timesteps=1000), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def save_pipeline(pipe: Any, out_dir: str | Path) -> Path:
    """`pipe` saved (safetensors) as a diffusers folder, atomically."""
    with atomic_folder(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return Path(out_dir)
