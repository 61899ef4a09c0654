"""Text-to-image pipelines: a pixel-space (DeepFloyd IF layout) and a Stable-Diffusion-style
latent pipeline, tiny and built from configs, saved as diffusers folders, loaded by path,
sampled, and trained through LoRA on the denoiser with the diffusion losses."""

import sys

import pytest
import torch

from alignlab.config import ConfigError, LoraConfig, ModelConfig, UserInputError
from alignlab.losses.diffusion import denoising_loss
from alignlab.models.t2i import (
    apply_denoiser_lora,
    denoiser_of,
    encode_prompts,
    load_t2i,
    predicted_noise,
)
from alignlab.models.t2i_tiny import save_pipeline, tiny_latent_pipeline, tiny_pixel_pipeline

BUILDERS = {"pixel": tiny_pixel_pipeline, "latent": tiny_latent_pipeline}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def folder(request, tmp_path_factory):
    torch.set_num_threads(1)
    pipe = BUILDERS[request.param](image_size=32)
    return request.param, save_pipeline(pipe, tmp_path_factory.mktemp("t2i") / request.param)


def _inputs(pipe, kind, batch=2):
    """(x_t, t, embeds, eps) for a denoising step: pixels for IF, the VAE's latents for SD."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=generator) * 2 - 1
    if kind == "latent":
        with torch.no_grad():
            x0 = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    else:
        x0 = images
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([10, 700])[:batch]
    x_t = pipe.scheduler.add_noise(x0, eps, t)
    return x_t, t, encode_prompts(pipe, ["a red circle", "two blue squares"][:batch]), eps


def test_a_saved_pipeline_loads_by_path_and_samples_without_torchvision(folder):
    kind, path = folder
    pipe = load_t2i(ModelConfig(path=str(path)))
    assert type(pipe).__name__ == {"pixel": "IFPipeline", "latent": "StableDiffusionPipeline"}[kind]
    generator = torch.Generator().manual_seed(0)
    images = pipe(
        ["a red circle"], num_inference_steps=3, height=32, width=32, output_type="pil",
        generator=generator,
    ).images  # fmt: skip
    assert images[0].size == (32, 32)
    assert "torchvision" not in sys.modules


def test_lora_on_the_denoiser_trains_adapters_only_and_lowers_the_loss(folder):
    kind, path = folder
    pipe = load_t2i(ModelConfig(path=str(path)))
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    base = {k: v.clone() for k, v in denoiser_of(pipe).state_dict().items() if "lora" not in k}
    trainable = apply_denoiser_lora(pipe, LoraConfig(enabled=True, r=4, alpha=4))
    denoiser = denoiser_of(pipe)
    names = [n for n, p in denoiser.named_parameters() if p.requires_grad]
    assert trainable > 0 and names and all("lora" in n for n in names)
    x_t, t, embeds, eps = _inputs(pipe, kind)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(8):  # one fixed batch: the adapters must fit it
        loss = denoising_loss(predicted_noise(denoiser, x_t, t, embeds), eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = denoiser.state_dict()  # an adapted layer keeps its weights under base_layer
    for key, value in base.items():
        module, leaf = key.rsplit(".", 1)
        assert torch.equal(after.get(key, after.get(f"{module}.base_layer.{leaf}")), value), key
    assert all(torch.equal(v, before[k]) for k, v in pipe.text_encoder.state_dict().items())


def test_lora_names_and_paths_errors_are_one_line(folder, tmp_path):
    kind, path = folder
    pipe = load_t2i(ModelConfig(path=str(path)))
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        apply_denoiser_lora(pipe, LoraConfig(enabled=True, target_modules=["no_such_layer"]))
    with pytest.raises(UserInputError, match="text-to-image pipeline"):
        load_t2i(ModelConfig(path=str(tmp_path / "missing")))


def test_the_noise_of_a_learned_variance_unet_is_its_first_half(folder):
    kind, path = folder
    pipe = load_t2i(ModelConfig(path=str(path)))
    x_t, t, embeds, _ = _inputs(pipe, kind)
    with torch.no_grad():
        full = denoiser_of(pipe)(x_t, t, encoder_hidden_states=embeds).sample
        eps = predicted_noise(denoiser_of(pipe), x_t, t, embeds)
    assert eps.shape == x_t.shape
    assert torch.equal(eps, full[:, : x_t.shape[1]])
