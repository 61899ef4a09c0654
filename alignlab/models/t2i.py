"""Load any diffusers text-to-image pipeline and reach what the text-to-image recipes train.

    pipe = load_t2i(ModelConfig(path="runs/lab-t2i/base"))        # or a hub id
    denoiser = denoiser_of(pipe)                    # the UNet or the transformer
    embeds = encode_prompts(pipe, ["a red circle"])  # (B, L, D) text conditioning
    eps = predicted_noise(denoiser, x_t, t, embeds)  # ε_θ(x_t, t, c), the losses' input
    apply_denoiser_lora(pipe, LoraConfig(enabled=True, r=8))  # adapters on attention

A pipeline is a folder of parts (model_index.json naming each); `DiffusionPipeline` loads
Stable-Diffusion-style latent pipelines (text encoder + VAE + UNet) and pixel-space ones
(DeepFloyd IF's layout: text encoder + UNet on pixels) alike, by path or hub id. What a recipe
needs from either is the denoiser, the text conditioning and ε-prediction; the samplers are the
pipeline's own schedulers. Nothing here needs torchvision (PyPI's does not import beside the
torch build of these machines); images go through PIL and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alignlab.config import ConfigError, LoraConfig, ModelConfig, UserInputError
from alignlab.models.folders import load_error
from alignlab.models.loading import DTYPES

DENOISERS = ("unet", "transformer")
"""Where diffusers pipelines keep the network that predicts the noise."""

ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
"""LoRA's default targets in a denoiser: its attention projections (as diffusers' LoRA
training scripts)."""


def load_t2i(cfg: ModelConfig, device: torch.device | str | None = None) -> Any:
    """The diffusers pipeline at `cfg.path` (folder or hub id) in `cfg.dtype`, on `device`;
    a one-line UserInputError when it cannot load or has no denoiser."""
    from diffusers import DiffusionPipeline  # imported here: the text recipes never need it

    revision = {"revision": cfg.revision} if cfg.revision else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(
            cfg.path, torch_dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code,
            **revision,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        raise load_error(cfg.path, "text-to-image pipeline", err) from err
    denoiser_of(pipe)  # refuse a pipeline without one now, not at the first step
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser_of(pipe: Any) -> nn.Module:
    """The pipeline's noise-predicting network (`unet`, else `transformer`)."""
    for name in DENOISERS:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            return module
    raise UserInputError(
        f"{type(pipe).__name__} has no {' or '.join(DENOISERS)}: the text-to-image recipes "
        "train a pipeline's denoiser"
    )


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """(B, L, D) text conditioning of `prompts` by the pipeline's own `encode_prompt` (its
    tokenizer, padding and text encoder), without classifier-free guidance's empty prompt."""
    device = next(denoiser_of(pipe).parameters()).device
    embeds, _ = pipe.encode_prompt(
        prompt=list(prompts), device=device, num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )  # fmt: skip
    return embeds


def predicted_noise(
    denoiser: nn.Module, x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
) -> torch.Tensor:
    """ε_θ(x_t, t, c), shaped as x_t. A denoiser that also predicts its variance (DeepFloyd
    IF's learned range: twice the input channels out) gives its first half, the noise."""
    out = denoiser(x_t, t, encoder_hidden_states=embeds).sample
    channels = x_t.shape[1]
    if out.shape[1] == 2 * channels:
        out = out[:, :channels]
    return out


def denoiser_lora_targets(denoiser: nn.Module, target_modules: list[str]) -> list[str]:
    """The denoiser's linear layers named by `target_modules` (last name parts or
    suffixes; ["all-linear"]: every one). The text default (q_proj ... down_proj), which no
    denoiser has, means its attention projections; other names that match nothing are a
    ConfigError."""
    linear = [name for name, m in denoiser.named_modules() if isinstance(m, nn.Linear)]
    if target_modules == ["all-linear"]:
        return linear
    wanted = target_modules
    if wanted == LoraConfig().target_modules:
        wanted = ATTENTION_PROJECTIONS
    found = [name for name in linear if any(name.endswith(w) for w in wanted)]
    if not found:
        raise ConfigError(
            f"model.lora.target_modules={target_modules}: no linear layer of the "
            f"{type(denoiser).__name__} ends with those names (its attention projections are "
            f"{', '.join(ATTENTION_PROJECTIONS)})"
        )
    return found


def apply_denoiser_lora(pipe: Any, lora: LoraConfig) -> int:
    """LoRA adapters (peft, through diffusers' `add_adapter`) on the denoiser's linear layers
    (`denoiser_lora_targets`), the rest of the pipeline frozen; returns the trainable
    parameter count."""
    from peft import LoraConfig as PeftLoraConfig

    for part in pipe.components.values():
        if isinstance(part, nn.Module):
            part.requires_grad_(False)
    denoiser = denoiser_of(pipe)
    denoiser.add_adapter(
        PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=denoiser_lora_targets(denoiser, lora.target_modules),
            init_lora_weights="gaussian",
        )
    )  # fmt: skip
    return sum(p.numel() for p in denoiser.parameters() if p.requires_grad)
