"""Simulated human feedback on generated shapes images, from the text-to-image gold.

    labels = match_labels(requests, images, annotators)            # Lee et al. 2023: yes / no
    choices = pair_labels(requests, images_a, images_b, annotators)  # HPS (Wu et al. 2023)

Both read each image's gold with `t2i_gold.score(request, image).reward` (compositional
partial score x image quality, 0 for a degenerate image) and hand it to the lab's annotators
(`alignlab.lab.annotators`): Bradley-Terry on the gold, careless flips, a panel's majority
vote. A "matches the prompt" label is yes when the gold clears `threshold` (an annotator at a
gold of exactly `threshold` says yes half the time); a pairwise choice prefers the image with
the higher gold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from alignlab.lab.annotators import Annotator, BinaryLabelSet, LabelSet, label_binary, label_pairs
from alignlab.lab.shapes.t2i_gold import ImageRequest, score

ImageLike = Image.Image | np.ndarray


def image_golds(requests: Sequence[ImageRequest], images: Sequence[ImageLike]) -> list[float]:
    """The gold reward of each image for its request."""
    if len(requests) != len(images):
        raise ValueError(f"{len(images)} images for {len(requests)} requests (one each)")
    return [score(request, image).reward for request, image in zip(requests, images)]


def match_labels(
    requests: Sequence[ImageRequest],
    images: Sequence[ImageLike],
    annotators: Sequence[Annotator],
    threshold: float = 0.75,
    seed: int = 0,
) -> BinaryLabelSet:
    """Binary "does the image match its prompt?" labels (see the module docstring); at the
    default threshold an image must get most of what was asked, in a clean image."""
    return label_binary(image_golds(requests, images), annotators, threshold, seed)


def pair_labels(
    requests: Sequence[ImageRequest],
    images_a: Sequence[ImageLike],
    images_b: Sequence[ImageLike],
    annotators: Sequence[Annotator],
    seed: int = 0,
) -> LabelSet:
    """Pairwise choices between two images for the same request (see the module docstring)."""
    return label_pairs(
        image_golds(requests, images_a), image_golds(requests, images_b), annotators, seed
    )
