"""Gold for text-to-image generation in the shapes world: a prompt spec (`ImageRequest`), its
English prompt, a tolerant read-back of generated images (`detect`) and a GenEval-style score
(`score` -> `T2IGold`) with an image-quality term that catches degenerate images.

Request and prompt. `ImageRequest(objects, relations)` asks for objects `Wanted(kind, colour,
count, cell=None)` and optionally relations `(i, "left of", j)` between two of them;
`prompt_text` says it in one deterministic phrase: "two red circles and a blue square",
"a green star in the top left", "a red circle and a blue square, with the red circle left of
the blue square". A request lists the whole image, as the world's captions do.

Read-back (`detect`). Generated images are soft, noisy and small (32-64 pixels), so the
clean-render read-back (`render.read_back`) is made tolerant in three places:

    pixels      a pixel takes the nearest palette colour only within PALETTE_TOLERANCE of it,
                else it is off-palette (soft edges, noise)
    components  each colour's 8-connected components are cores; a core's footprint is the
                pixels within REACH of it that are a blend of its colour and the background,
                weighted by their coverage (alpha); a footprint under MIN_SHAPE_AREA of the
                image is a speck: joined to a shape whose core is within REACH, else dropped,
                and counted unless it lies next to a shape (a star's tip cut loose, an edge
                blend that noise pushed near another colour)
    kind        moments of the footprint that blur leaves unchanged: an apex-up triangle's
                mass sits low (third moment in y), a star has five points (five-fold complex
                moment); of the rest, a square fills its box and a circle does not; the size
                comes from the area, which blur keeps too

A clean render has alpha 0 or 1, so every footprint is its component and `detect` reads the
same scene as `read_back` at every size. The fill ratio `read_back` uses for every kind fails
on small generated images: blur rounds a 5-pixel star into a blob of a circle's fill.

Score. Over (colour, kind) pairs, the criteria are fractions in [0, 1]:

    objects     asked objects present with their colour and kind (sum of min(found, asked)
                over sum of asked)
    counts      pairs asked or found whose number is exact: an extra object, asked or not,
                is a count error (unlike GenEval, whose prompts do not list the whole image)
    positions   positioned objects found in their cell (None when no cell is asked)
    relations   relations that hold between some found pair of the two objects (None: none)

`accuracy` is 1 iff every criterion is 1 and the image is not degenerate (GenEval: all or
nothing per prompt); `partial` is the criteria's mean, 0 for a degenerate image (a red flood
reads as one huge red square, which draws no prompt). Degenerate images:

    blank          no shape and almost all background
    single colour  one colour, not the background, floods most of the image
    noise          much haze (off-palette pixels away from the shapes) or many specks

`quality` is 0 for a degenerate image, else falls from 1 with the haze and the specks beyond
what a soft, mildly noisy image has. `reward` = partial x quality, one number for feedback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from alignlab.lab.shapes.gold import NUMBER_WORDS
from alignlab.lab.shapes.render import PALETTE, SIZE_THRESHOLD, colour_indices
from alignlab.lab.shapes.spec import CELLS, COLOURS, KINDS, RELATIONS, Scene, Shape, holds
from alignlab.lab.shapes.text import plural

Pair = tuple[str, str]  # (colour, kind)

# --- thresholds (measured on renders at 64-224 px, and on 64-px renders resized to 32 and 48
# px with each PIL filter, Gaussian-blurred by 0.6 px and given pixel noise of sigma 8) -------

# Half the distance of the two closest palette colours (yellow and orange, 115 apart): a
# pixel is near at most one colour, and no blend of a colour with black comes this close to
# another colour (the closest, yellow dimmed towards orange, stays 81 away), so soft edges
# are off-palette rather than specks of a wrong colour (unless noise pushes them).
PALETTE_TOLERANCE = 57.0
# Share of the image under which a footprint is a speck: a quarter of the smallest shape (a
# small star covers ~1.1% of the image at any size; at 32 px, 11 pixels).
MIN_SHAPE_AREA = 0.0025
# Pixels from a core that can still belong to its shape: downsampling to 32 px and slight blur
# spread an edge over about 2 pixels; two shapes are at least 0.2 of a cell (2 px at 32 px)
# apart, and each pixel goes to the nearest core.
REACH = 2.0
# mu_03 / area^2.5 (y down): an apex-up triangle's mass sits low: -0.021 clean, -0.015 to
# -0.028 degraded; the other kinds -0.011 to +0.011. A symmetric blur adds no third moment.
TRIANGLE_SKEW = -0.013
# Im(sum alpha (x - iy)^5) / area^3.5 about the centroid (y up): a five-pointed star, point
# up, measures 0.041-0.046 clean and 0.012 or more degraded; circles and squares stay within
# 0.002, a triangle (decided first) up to 0.02. Isotropic blur adds nothing to this moment.
STAR_FIVEFOLD = 0.006
# Soft area over soft box (a row's or column's largest coverage, summed): squares 0.91-1.0,
# circles 0.72-0.82 (pi/4 drawn cleanly), so the cut sits between them.
SQUARE_FILL = 0.865
# Area over the longer box side squared, per kind, to size a shape by its area (which blur
# keeps) against render.SIZE_THRESHOLD: a star (inner radius 0.4) is 1.18 h^2 over 1.90 h.
KIND_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "star": 0.325}

# Blank: no shape and this much background. A single small shape at 32 px leaves ~98.5%
# background, so "almost all background" alone would call it blank; with no shape found,
# what is left is haze or specks.
BLANK_BACKGROUND = 0.95
# Single colour: the image's median colour (not the background) within PALETTE_TOLERANCE of
# this share of the pixels; a colour over half the image is its median. Six large squares of
# one colour cover at most 47% of a 32-px image, so no drawing of this world reaches 60%.
FLOOD_SHARE = 0.6
# Noise is judged by the haze, the off-palette share of the pixels away from every shape:
# the plain off-palette share counts soft edges too (up to ~0.22 for six large shapes at 32
# px), while haze is ~0 for every soft image with mild noise and measures the noise alone
# (pixel noise of sigma 20: 0.02, 30: 0.12, 40: 0.25, 50: 0.38, 80: 0.57, uniform: 0.9).
# Quality falls linearly from 1 at CLEAN_HAZE to 0 at NOISE_HAZE, where the image is noise.
CLEAN_HAZE, NOISE_HAZE = 0.03, 0.3
# Specks away from shapes: a soft image with mild noise has none, sigma 30 up to 2, sigma 50
# a dozen and sigma 80 over a hundred (at 64 px). Quality falls from 1 at none to 0 here.
NOISE_SPECKS = 8

_COLOUR_VECTORS = PALETTE[1:].astype(np.float64)  # (8, 3), in COLOURS order
_COLOUR_NAMES = tuple(COLOURS)
_COUNT_WORDS = {number: word for word, number in NUMBER_WORDS.items()}


# --- the request --------------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """`count` objects of a colour and kind; `cell` asks for one object in that cell."""

    kind: str
    colour: str
    count: int = 1
    cell: str | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("colour", self.colour, tuple(COLOURS)),
            ("cell", self.cell, (None, *CELLS)),
        ):
            if value not in allowed:
                raise ValueError(f"wanted {name}={value!r}: must be one of {allowed}")
        if not 1 <= self.count <= len(CELLS):
            raise ValueError(f"wanted count={self.count}: must be 1-{len(CELLS)}")
        if self.cell is not None and self.count != 1:
            raise ValueError("a cell holds one shape: a positioned object has count 1")

    @property
    def pair(self) -> Pair:
        return self.colour, self.kind


@dataclass(frozen=True)
class ImageRequest:
    """Objects to draw and relations `(i, relation, j)` between `objects[i]` and `objects[j]`,
    each of which must be the only object of its colour and kind ("the red circle")."""

    objects: tuple[Wanted, ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("a request asks for at least one object")
        if sum(w.count for w in self.objects) > len(CELLS):
            raise ValueError(f"a request asks for at most {len(CELLS)} objects, one per cell")
        cells = [w.cell for w in self.objects if w.cell is not None]
        if len(set(cells)) != len(cells):
            raise ValueError("two objects asked in one cell")
        asked = self.asked()
        for i, relation, j in self.relations:
            if relation not in RELATIONS:
                raise ValueError(f"relation {relation!r}: must be one of {RELATIONS}")
            if not (0 <= i < len(self.objects) and 0 <= j < len(self.objects)) or i == j:
                raise ValueError(f"relation ({i}, {relation!r}, {j}): needs two object indices")
            if asked[self.objects[i].pair] != 1 or asked[self.objects[j].pair] != 1:
                raise ValueError("a relation's objects must be the only ones of their kind")

    def asked(self) -> Counter[Pair]:
        """How many objects of each (colour, kind) the request asks for in all."""
        asked: Counter[Pair] = Counter()
        for wanted in self.objects:
            asked[wanted.pair] += wanted.count
        return asked


def from_scene(scene: Scene, positions: bool = False) -> ImageRequest:
    """The request a scene answers: its shapes grouped by (colour, kind) with their counts, in
    order of first appearance (reading order); with `positions`, one object per shape in its
    cell. Sizes are not asked: a prompt names what GenEval checks."""
    if positions:
        return ImageRequest(tuple(Wanted(s.kind, s.colour, 1, s.cell) for s in scene.shapes))
    counts = Counter((s.colour, s.kind) for s in scene.shapes)  # insertion order: first seen
    return ImageRequest(tuple(Wanted(kind, colour, n) for (colour, kind), n in counts.items()))


def object_phrase(wanted: Wanted) -> str:
    """ "a red circle", "an orange star", "two red circles", "a green star in the top left"."""
    if wanted.count == 1:
        article = "an" if wanted.colour[0] in "aeiou" else "a"
        phrase = f"{article} {wanted.colour} {wanted.kind}"
    else:
        phrase = f"{_COUNT_WORDS[wanted.count]} {wanted.colour} {plural(wanted.kind)}"
    return phrase if wanted.cell is None else f"{phrase} in the {wanted.cell}"


def prompt_text(request: ImageRequest) -> str:
    """The request in English: objects in request order ("A, B and C"), then the relations
    (", with the red circle left of the blue square and ...")."""
    text = _listed([object_phrase(w) for w in request.objects])
    clauses = [
        f"the {request.objects[i].colour} {request.objects[i].kind} {relation} "
        f"the {request.objects[j].colour} {request.objects[j].kind}"
        for i, relation, j in request.relations
    ]
    return f"{text}, with {_listed(clauses)}" if clauses else text


def _listed(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --- the read-back -------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """What `detect` reads from an image: its shapes (reading order) and statistics.

    `off_palette` and `background` are shares of the pixels; `specks` counts the footprints
    too small for a shape and away from any; `haze` is the off-palette share of the pixels
    away from every shape (noise: soft edges lie next to shapes); `dominant_share` is the
    share of pixels near the image's median colour `dominant` (a flood of one colour)."""

    shapes: tuple[Shape, ...]
    off_palette: float
    background: float
    specks: int
    haze: float
    dominant: tuple[int, int, int]
    dominant_share: float

    def found(self) -> Counter[Pair]:
        """How many shapes of each (colour, kind) the image shows."""
        return Counter((s.colour, s.kind) for s in self.shapes)


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Read shapes and image statistics from a possibly soft, noisy image (module docstring)."""
    pixels = _pixels(image)
    indices = _palette_indices(pixels)
    alpha, blends = _coverage(pixels)
    min_area = MIN_SHAPE_AREA * indices.size
    shapes, covered, speck_maps = [], np.zeros(indices.shape, bool), []
    for colour_index, colour in enumerate(_COLOUR_NAMES):
        cores, n_cores = ndimage.label(indices == colour_index + 1, structure=np.ones((3, 3)))
        if not n_cores:
            continue
        layer = _colour_layer(cores, alpha[..., colour_index], blends[..., colour_index], min_area)
        for patch, box in layer.footprints:
            shapes.append(_read_shape(patch, box, colour, indices.shape))
            covered[box] |= patch >= 0.5
        speck_maps.append(layer.specks)
    dominant, dominant_share = _dominant(pixels)
    return Detection(
        shapes=tuple(sorted(shapes, key=lambda s: (CELLS.index(s.cell), s.colour, s.kind))),
        off_palette=float((indices < 0).mean()),
        background=float((indices == 0).mean()),
        specks=sum(_loose(specks, covered) for specks in speck_maps),
        haze=_haze(indices, covered),
        dominant=dominant,
        dominant_share=dominant_share,
    )


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"an RGB image is (H, W, 3), got shape {pixels.shape}")
    return pixels.astype(np.float64)


def _palette_indices(pixels: np.ndarray) -> np.ndarray:
    """(H, W) nearest palette index (0 background, i the i-th colour), -1 where the nearest
    colour is further than PALETTE_TOLERANCE."""
    indices = colour_indices(pixels)
    distance = np.linalg.norm(pixels - PALETTE[indices], axis=-1)
    return np.where(distance <= PALETTE_TOLERANCE, indices, -1)


def _coverage(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, blends), each (H, W, 8): how much of each colour a pixel holds over the black
    background (its projection on the colour, clipped to 0-1), and whether the pixel is such
    a blend at all (within PALETTE_TOLERANCE of alpha x colour)."""
    alpha = np.clip(pixels @ _COLOUR_VECTORS.T / (_COLOUR_VECTORS**2).sum(1), 0.0, 1.0)
    blended = alpha[..., None] * _COLOUR_VECTORS  # (H, W, 8, 3)
    blends = np.linalg.norm(pixels[:, :, None, :] - blended, axis=-1) <= PALETTE_TOLERANCE
    return alpha, blends


@dataclass(frozen=True)
class _Layer:
    """One colour's reading: its shapes' footprints as (coverage patch, box in the image), and
    its specks' cores (footprints under the minimum area) that joined no shape, as labels."""

    footprints: list[tuple[np.ndarray, tuple[slice, slice]]]
    specks: np.ndarray


def _colour_layer(
    cores: np.ndarray, alpha: np.ndarray, blends: np.ndarray, min_area: float
) -> _Layer:
    """Each pixel within REACH of a core and a blend of the colour goes to its nearest core. A
    footprint under `min_area` is a speck; the footprints are then drawn again around the
    shapes' cores alone, so a speck within REACH of a shape's core joins it."""
    labels = np.arange(1, cores.max() + 1)
    areas = ndimage.sum(alpha, _nearest_core(cores, blends), index=labels)
    is_shape = np.concatenate([[False], areas >= min_area])  # indexed by core label
    owner = _nearest_core(np.where(is_shape[cores], cores, 0), blends)
    footprints = [
        (np.where(owner[box] == label, alpha[box], 0.0), box)
        for label, box in enumerate(ndimage.find_objects(owner), 1)
        if box is not None
    ]
    return _Layer(footprints, np.where(~is_shape[cores] & (owner == 0), cores, 0))


def _loose(specks: np.ndarray, covered: np.ndarray) -> int:
    """How many specks (labels) lie further than REACH from every pixel a shape covers at
    least half: one next to a shape is its edge (a star's tip cut loose, an edge blend that
    noise pushed near another palette colour), not noise in the image."""
    all_specks = np.unique(specks[specks > 0])
    next_to_shapes = np.unique(specks[(specks > 0) & _near(covered)])
    return len(all_specks) - len(next_to_shapes)


def _haze(indices: np.ndarray, covered: np.ndarray) -> float:
    """Off-palette share of the pixels away from every shape (further than REACH from the
    pixels shapes cover at least half): soft edges are near shapes, noise is everywhere."""
    away = ~_near(covered)
    return float((indices[away] < 0).mean()) if away.any() else 0.0


def _near(covered: np.ndarray) -> np.ndarray:
    """(H, W) whether a pixel lies within REACH of a pixel a shape covers at least half."""
    if not covered.any():
        return covered
    return ndimage.distance_transform_edt(~covered) <= REACH


def _nearest_core(cores: np.ndarray, blends: np.ndarray) -> np.ndarray:
    """(H, W) label of the nearest core for blend pixels within REACH of one, else 0."""
    if not cores.any():
        return np.zeros_like(cores)
    distance, (rows, cols) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
    return np.where((distance <= REACH) & blends, cores[rows, cols], 0)


def _read_shape(
    patch: np.ndarray, box: tuple[slice, slice], colour: str, image_shape: tuple[int, int]
) -> Shape:
    """The shape a footprint's coverage `patch` (at `box` in the image) draws."""
    kind = _kind(patch)
    height, width = image_shape
    cell_side = width / 3
    size_ratio = np.sqrt(patch.sum() / KIND_FILL[kind]) / cell_side
    size = "large" if size_ratio > SIZE_THRESHOLD else "small"
    # The cell of the half-coverage box's centre, as read_back takes the component's box's.
    rows, cols = np.flatnonzero(patch.max(1) >= 0.5), np.flatnonzero(patch.max(0) >= 0.5)
    centre_row = box[0].start + (rows[0] + rows[-1] + 1) / 2
    centre_col = box[1].start + (cols[0] + cols[-1] + 1) / 2
    row = min(2, int(centre_row / (height / 3)))
    col = min(2, int(centre_col / cell_side))
    return Shape(kind, colour, size, CELLS[3 * row + col])


def _kind(patch: np.ndarray) -> str:
    """The kind from blur-invariant moments of the coverage, then the fill ratio (module
    docstring; thresholds above)."""
    area = patch.sum()
    ys, xs = np.indices(patch.shape, dtype=np.float64)
    dy = ys - (patch * ys).sum() / area
    dx = xs - (patch * xs).sum() / area
    if (patch * dy**3).sum() / area**2.5 < TRIANGLE_SKEW:
        return "triangle"
    # x - iy puts y up: the star's upper point lies on the positive imaginary axis
    if (patch * (dx - 1j * dy) ** 5).sum().imag / area**3.5 > STAR_FIVEFOLD:
        return "star"
    fill = area / (patch.max(0).sum() * patch.max(1).sum())
    return "square" if fill >= SQUARE_FILL else "circle"


def _dominant(pixels: np.ndarray) -> tuple[tuple[int, int, int], float]:
    """The image's median colour and the share of pixels within PALETTE_TOLERANCE of it."""
    median = np.median(pixels.reshape(-1, 3), axis=0)
    share = float((np.linalg.norm(pixels - median, axis=-1) <= PALETTE_TOLERANCE).mean())
    return tuple(int(round(v)) for v in median), share


# --- the score -----------------------------------------------------------------------------


@dataclass(frozen=True)
class T2IGold:
    """Gold verdict on one generated image (module docstring). `reason` is why the image is
    degenerate ("blank", "single colour", "noise") or None; `details` lists the pairs
    miscounted and the cells missed."""

    accuracy: float
    partial: float
    objects: float
    counts: float
    positions: float | None
    relations: float | None
    quality: float
    reason: str | None
    detection: Detection = field(compare=False, hash=False)
    details: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def degenerate(self) -> bool:
        return self.reason is not None

    @property
    def reward(self) -> float:
        """One number for feedback: composition times image quality."""
        return self.partial * self.quality


def score(request: ImageRequest, image: Image.Image | np.ndarray) -> T2IGold:
    """Gold verdict on `image` generated for `request` (module docstring)."""
    detection = detect(image)
    asked, found = request.asked(), detection.found()
    objects = sum(min(n, found[pair]) for pair, n in asked.items()) / sum(asked.values())
    pairs = sorted(set(asked) | set(found))
    miscounted = {
        f"{c} {k}": [asked[(c, k)], found[(c, k)]]
        for c, k in pairs
        if asked[(c, k)] != found[(c, k)]
    }
    counts = 1 - len(miscounted) / len(pairs)
    positioned = [w for w in request.objects if w.cell is not None]
    missed = [w.cell for w in positioned if not _found_in(detection, w)]
    positions = 1 - len(missed) / len(positioned) if positioned else None
    relations = _relations_held(request, detection)
    criteria = [c for c in (objects, counts, positions, relations) if c is not None]
    reason = degenerate_reason(detection)
    composed = reason is None
    return T2IGold(
        accuracy=float(composed and all(c == 1 for c in criteria)),
        partial=sum(criteria) / len(criteria) if composed else 0.0,
        objects=objects,
        counts=counts,
        positions=positions,
        relations=relations,
        quality=image_quality(detection),
        reason=reason,
        detection=detection,
        details={"miscounted": miscounted, "missed_cells": missed},
    )


def _found_in(detection: Detection, wanted: Wanted) -> bool:
    return any(
        (s.colour, s.kind, s.cell) == (wanted.colour, wanted.kind, wanted.cell)
        for s in detection.shapes
    )


def _relations_held(request: ImageRequest, detection: Detection) -> float | None:
    """Share of the relations that hold between some found shapes of their two objects."""
    if not request.relations:
        return None
    held = 0
    for i, relation, j in request.relations:
        first = [s for s in detection.shapes if (s.colour, s.kind) == request.objects[i].pair]
        second = [s for s in detection.shapes if (s.colour, s.kind) == request.objects[j].pair]
        held += any(holds(a, relation, b) for a in first for b in second)
    return held / len(request.relations)


def degenerate_reason(detection: Detection) -> str | None:
    """ "blank", "single colour", "noise" or None (thresholds above), checked in this order:
    a flat colour is no noise, and an empty image no flood."""
    if not detection.shapes and detection.background >= BLANK_BACKGROUND:
        return "blank"
    if detection.dominant_share >= FLOOD_SHARE and not _is_background(detection.dominant):
        return "single colour"
    if detection.haze >= NOISE_HAZE or detection.specks >= NOISE_SPECKS:
        return "noise"
    return None


def _is_background(colour: tuple[int, int, int]) -> bool:
    return float(np.linalg.norm(np.subtract(colour, PALETTE[0]))) <= PALETTE_TOLERANCE


def image_quality(detection: Detection) -> float:
    """0 for a degenerate image; else from 1 down to 0 as the haze goes from CLEAN_HAZE to
    NOISE_HAZE and the specks from none to NOISE_SPECKS (the worse of the two decides)."""
    if degenerate_reason(detection) is not None:
        return 0.0
    haze = (NOISE_HAZE - detection.haze) / (NOISE_HAZE - CLEAN_HAZE)
    specks = 1 - detection.specks / NOISE_SPECKS
    return float(np.clip(min(haze, specks), 0.0, 1.0))
