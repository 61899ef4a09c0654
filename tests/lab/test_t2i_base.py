"""The lab's text-to-image base: loose captions miscaption at their rates, and the
pretraining loop saves a diffusers folder that loads and samples."""

import random

import numpy as np
import torch

from alignlab.config import ModelConfig
from alignlab.lab.shapes.spec import Scene
from alignlab.lab.shapes.t2i_base import LooseCaptions, pretrain_generator, scene_pixels
from alignlab.lab.shapes.t2i_gold import from_scene, prompt_text, score
from alignlab.lab.shapes.text import ShapesWorld
from alignlab.models.t2i import load_t2i

SCENES = ShapesWorld(0).scenes("train", 400, stream="test")


def test_exact_captions_when_no_error_is_asked():
    exact = LooseCaptions(colour_error=0, count_error=0, drop=0)
    rng = random.Random(0)
    for scene in SCENES[:50]:
        assert exact(scene, rng) == (prompt_text(from_scene(scene)), True)


def test_each_error_kind_miscaptions_single_shape_scenes_at_its_rate():
    single = [Scene(s.shapes[:1]) for s in SCENES]
    for kind, rate in (("colour_error", 0.3), ("count_error", 0.5)):
        captions = LooseCaptions(**{"colour_error": 0, "count_error": 0, "drop": 0, kind: rate})
        rng = random.Random(1)
        wrong = sum(not captions(scene, rng)[1] for scene in single) / len(single)
        # a count of 1 minus one stays 1: half the count errors of single shapes are no-ops
        expected = rate if kind == "colour_error" else rate / 2
        assert abs(wrong - expected) < 4 * np.sqrt(expected * (1 - expected) / len(single)), kind
    # dropping never leaves a caption empty
    drop_all = LooseCaptions(colour_error=0, count_error=0, drop=1.0)
    assert all(drop_all(scene, random.Random(2))[0] for scene in SCENES[:50])


def test_pixels_read_back_as_their_scene_and_the_base_saves_and_samples(tmp_path):
    torch.set_num_threads(1)
    for scene in SCENES[:5]:  # the training images are what the gold reads at 32 px
        pixels = ((scene_pixels(scene, 32).transpose(1, 2, 0) + 1) * 127.5).round()
        assert score(from_scene(scene), pixels.astype(np.uint8)).accuracy == 1.0
    folder = pretrain_generator(tmp_path / "base", steps=2, batch_size=4, progress=False)
    pipe = load_t2i(ModelConfig(path=str(folder)))
    image = pipe(["a red circle"], num_inference_steps=2, height=32, width=32).images[0]
    assert image.size == (32, 32)
    # the variance channels the noise loss never trains stay at zero (the sampler's
    # variance then stays inside its range; random ones turn every image into noise)
    head = pipe.unet.conv_out
    assert not head.weight[3:].any() and not head.bias[3:].any() and head.weight[:3].any()
