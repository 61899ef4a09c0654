"""The lab's text-to-image base: a tiny pixel-space diffusion model pretrained on shapes scenes
with deliberately loose captions, so that it starts misaligned in ways the gold can measure,
as web-scale captions leave real generators (counts and colours often wrong).

    captions = LooseCaptions(colour_error=0.3, count_error=0.3, drop=0.2)
    caption, exact = captions(scene, rng)          # "two red circles" for 1 red circle ...
    pretrain_generator("runs/lab-t2i/base", steps=2000)

Pretraining is DDPM's (Ho et al. 2020): x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε at a uniform
t, loss = `alignlab.losses.diffusion.denoising_loss(ε_θ(x_t, t, c), ε)`, with the T5 text
encoder trained beside the UNet (the lab's encoder starts random, unlike IF's frozen T5-XXL).
Scenes are drawn at 64 px and shrunk to `image_size` with PIL's box filter (the renderer draws
64-224 px). Work in progress for issue 18: the length of pretraining and the caption error
rates that give a measurably misaligned base are not settled yet (docs/t2i.md).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alignlab.lab.shapes.render import render
from alignlab.lab.shapes.spec import COLOURS, Scene
from alignlab.lab.shapes.t2i_gold import ImageRequest, Wanted, from_scene, prompt_text
from alignlab.lab.shapes.text import ShapesWorld
from alignlab.losses.diffusion import denoising_loss
from alignlab.models.t2i import denoiser_of, predicted_noise
from alignlab.models.t2i_tiny import prompt_tokenizer, save_pipeline, tiny_pixel_pipeline


@dataclasses.dataclass(frozen=True)
class LooseCaptions:
    """Each object of a scene's request is miscaptioned independently: its colour swapped
    (`colour_error`), its count off by one (`count_error`), or left out (`drop`, never the
    only object)."""

    colour_error: float = 0.3
    count_error: float = 0.3
    drop: float = 0.2

    def __call__(self, scene: Scene, rng: random.Random) -> tuple[str, bool]:
        """(caption, whether it describes the scene exactly)."""
        objects = list(from_scene(scene).objects)
        kept = [w for w in objects if len(objects) == 1 or rng.random() >= self.drop] or objects
        loose = [self._blur(w, rng) for w in kept]
        merged = _merged(loose)
        exact = merged == _merged(objects)
        return prompt_text(ImageRequest(tuple(merged))), exact

    def _blur(self, wanted: Wanted, rng: random.Random) -> Wanted:
        colour, count = wanted.colour, wanted.count
        if rng.random() < self.colour_error:
            colour = rng.choice([c for c in COLOURS if c != colour])
        if rng.random() < self.count_error:
            count = max(1, count + rng.choice((-1, 1)))
        return Wanted(wanted.kind, colour, count)


def _merged(objects: list[Wanted]) -> list[Wanted]:
    """Objects of the same colour and kind as one, counts added (capped at 9), in order."""
    counts: dict[tuple[str, str], int] = {}
    for w in objects:
        counts[w.pair] = min(9, counts.get(w.pair, 0) + w.count)
    total, out = 0, []
    for (colour, kind), n in counts.items():
        n = min(n, 9 - total)
        if n > 0:
            out.append(Wanted(kind, colour, n))
            total += n
    return out


def scene_pixels(scene: Scene, image_size: int) -> np.ndarray:
    """(3, S, S) float32 in [-1, 1]: the scene drawn at 64 px, box-filtered to `image_size`."""
    from PIL import Image

    image = render(scene, 64)
    if image_size != 64:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def pretrain_generator(
    out_dir: str | Path,
    steps: int = 2000,
    batch_size: int = 32,
    image_size: int = 32,
    width: int = 32,
    lr: float = 3e-4,
    captions: LooseCaptions = LooseCaptions(),
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Pretrain `tiny_pixel_pipeline` (UNet `width`) on train-split scenes with `captions`;
    save it as a diffusers folder at `out_dir` (atomically) and return the folder."""
    torch.manual_seed(seed)
    world = ShapesWorld(seed)
    rng = random.Random(f"alignlab-shapes/{seed}/t2i-captions")
    pipe = tiny_pixel_pipeline(prompt_tokenizer(), image_size=image_size, width=width, seed=seed)
    denoiser, encoder = denoiser_of(pipe), pipe.text_encoder
    denoiser.train()
    encoder.train()
    params = [*denoiser.parameters(), *encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = pipe.scheduler
    tokenizer = pipe.tokenizer
    scenes = world.scenes("train", steps * batch_size, stream="t2i")
    bar = tqdm(range(steps), desc="t2i base", disable=not progress)
    for step in bar:
        batch = scenes[step * batch_size : (step + 1) * batch_size]
        x0 = torch.from_numpy(np.stack([scene_pixels(s, image_size) for s in batch]))
        texts = [captions(s, rng)[0] for s in batch]
        tokens = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        embeds = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        eps = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),))
        loss = denoising_loss(
            predicted_noise(denoiser, scheduler.add_noise(x0, eps, t), t, embeds), eps
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    denoiser.eval()
    encoder.eval()
    return save_pipeline(pipe, out_dir)
