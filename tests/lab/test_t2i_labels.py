"""Simulated feedback on generated images: binary "matches the prompt" labels (Lee et al.) and
pairwise choices (HPS) from the text-to-image gold, through the lab's annotators."""

import dataclasses
import math
import random

import numpy as np
import pytest

from alignlab.lab.annotators import Annotator, label_binary
from alignlab.lab.shapes.render import render
from alignlab.lab.shapes.spec import COLOURS, Scene, sample_scene, split_triples
from alignlab.lab.shapes.t2i_gold import from_scene
from alignlab.lab.shapes.t2i_labels import match_labels, pair_labels

SHARP = Annotator(temperature=1e-3, flip_rate=0.0)


def test_binary_labels_follow_the_gold_and_flip_at_the_rate():
    golds = [0.1, 0.9] * 1000
    sharp = label_binary(golds, [SHARP], threshold=0.5)
    assert sharp.says_yes == tuple(g > 0.5 for g in golds) and sharp.gold_agreement == 1.0
    flip = 0.2
    panel = [Annotator(temperature=1e-3, flip_rate=flip)] * 3
    noisy = label_binary(golds, panel, threshold=0.5, seed=1)
    # a 3-vote majority is wrong when 2 or 3 flip: 3 f^2 (1 - f) + f^3
    wrong = 3 * flip**2 * (1 - flip) + flip**3
    spread = 4 * math.sqrt(wrong * (1 - wrong) / len(golds))
    assert abs((1 - noisy.gold_agreement) - wrong) < spread
    assert noisy.cost == 3 * len(golds)
    assert label_binary(golds, panel, seed=1) == noisy  # seeded
    assert label_binary(golds, panel, seed=2) != noisy
    # an annotator at the threshold is a coin
    coin = label_binary([0.5] * 4000, [SHARP], threshold=0.5)
    assert abs(sum(coin.says_yes) / 4000 - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert math.isnan(coin.gold_agreement)
    with pytest.raises(ValueError, match="annotator"):
        label_binary(golds, [])


def _scenes(n, seed=0):
    rng = random.Random(seed)
    parts = {cell: [(c, k) for c, k in pairs] for cell, pairs in split_triples(0)["train"].items()}
    return [sample_scene(parts, rng, max_shapes=3) for _ in range(n)]


def _recoloured(scene):
    """The scene with its first shape in another colour: an image that misses the prompt."""
    first, *rest = scene.shapes
    other = next(c for c in COLOURS if c != first.colour)
    return Scene((dataclasses.replace(first, colour=other), *rest))


def test_right_images_match_and_win_wrong_and_blank_ones_do_not():
    scenes = _scenes(12)
    requests = [from_scene(s, positions=True) for s in scenes]
    right = [render(s, 64) for s in scenes]
    wrong = [render(_recoloured(s), 64) for s in scenes]
    blank = [np.zeros((64, 64, 3), dtype=np.uint8)] * len(scenes)
    yes_right = match_labels(requests, right, [SHARP]).says_yes
    yes_wrong = match_labels(requests, wrong, [SHARP]).says_yes
    yes_blank = match_labels(requests, blank, [SHARP]).says_yes
    assert all(yes_right) and not any(yes_wrong) and not any(yes_blank)
    choices = pair_labels(requests, right, wrong, [SHARP])
    assert all(choices.prefers_a) and all(m > 0 for m in choices.gold_margins)
    with pytest.raises(ValueError, match="requests"):
        match_labels(requests, right[:-1], [SHARP])
