"""The shapes world: scene specs, compositional splits, rendering, read-back, the grammar."""

import itertools
from collections import Counter

import numpy as np
import pytest

from alignlab.lab.shapes import (
    CELLS,
    COLOURS,
    KINDS,
    Scene,
    Shape,
    ShapesPrompt,
    ShapesWorld,
    caption,
    png_bytes,
    read_back,
    render,
)
from alignlab.lab.shapes.spec import BACKGROUND, holds, split_triples
from alignlab.lab.shapes.text import absent_pair, referent

WORLD = ShapesWorld(seed=0)


def test_scene_is_canonical_and_validated():
    a = Shape("circle", "red", "large", "top left")
    b = Shape("star", "blue", "small", "center")
    assert Scene((b, a)) == Scene((a, b))
    assert Scene((b, a)).shapes == (a, b)  # reading order
    with pytest.raises(ValueError, match="one shape per cell"):
        Scene((a, Shape("square", "green", "small", "top left")))
    with pytest.raises(ValueError, match="1-6 shapes"):
        Scene(())
    with pytest.raises(ValueError, match="1-6 shapes"):
        Scene(tuple(Shape("star", "red", "small", c) for c in CELLS[:7]))
    with pytest.raises(ValueError, match="kind='hexagon'"):
        Shape("hexagon", "red", "small", "center")
    with pytest.raises(ValueError, match="colour='pink'"):
        Shape("star", "pink", "small", "center")


def test_records_round_trip():
    for prompt in WORLD.prompts("valid", 40):
        assert Scene.from_record(prompt.scene.to_record()) == prompt.scene
        assert ShapesPrompt.from_record(prompt.to_record("images/x.png")) == prompt


def test_triples_are_partitioned_per_cell():
    parts = split_triples(0)
    every = {(c, k, cell) for c in COLOURS for k in KINDS for cell in CELLS}
    by_split = {
        split: {(c, k, cell) for cell, pairs in cells.items() for c, k in pairs}
        for split, cells in parts.items()
    }
    assert set.union(*by_split.values()) == every and len(every) == 288
    for a, b in itertools.combinations(by_split.values(), 2):
        assert not a & b
    assert {s: len(t) for s, t in by_split.items()} == {"train": 171, "valid": 45, "heldout": 72}
    assert all(parts[split][cell] for split in parts for cell in CELLS)  # every cell usable
    assert split_triples(1) != parts


def test_heldout_scenes_share_no_triple_with_train_scenes():
    train = {s.triple for scene in WORLD.scenes("train", 800) for s in scene.shapes}
    for split in ("valid", "heldout"):
        scenes = WORLD.scenes(split, 300)
        triples = {s.triple for scene in scenes for s in scene.shapes}
        assert triples and not triples & train
        # still every colour, kind and cell is seen in the split
        assert {t[0] for t in triples} == set(COLOURS) and {t[1] for t in triples} == set(KINDS)
        assert {t[2] for t in triples} == set(CELLS)
    assert len(train) > 150  # train scenes cover (nearly) the whole train part


def test_scenes_and_prompts_are_seeded_and_prefix_stable():
    assert ShapesWorld(0).prompts("train", 30) == WORLD.prompts("train", 30)
    assert WORLD.prompts("train", 10) == WORLD.prompts("train", 30)[:10]
    assert WORLD.scenes("train", 20, stream="a") != WORLD.scenes("train", 20, stream="b")
    assert ShapesWorld(1).scenes("train", 20) != WORLD.scenes("train", 20)
    sizes = Counter(len(s.shapes) for s in WORLD.scenes("train", 600))
    assert set(sizes) == {1, 2, 3, 4, 5, 6}
    with pytest.raises(ValueError, match="split"):
        WORLD.scenes("test", 1)


def test_rendering_is_byte_identical_and_uses_only_palette_colours():
    scene = WORLD.scenes("train", 1)[0]
    assert png_bytes(scene) == png_bytes(Scene(tuple(reversed(scene.shapes))))
    assert png_bytes(scene, 64) != png_bytes(scene, 96)
    palette = {BACKGROUND, *COLOURS.values()}
    for scene in WORLD.scenes("valid", 20):
        image = render(scene, 96)
        assert image.size == (96, 96)
        colours = {tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, 3)}
        assert colours <= palette  # no anti-aliased in-between colours
        assert colours - {BACKGROUND} == {COLOURS[s.colour] for s in scene.shapes}
    with pytest.raises(ValueError, match="image_size=300"):
        render(scene, 300)
    with pytest.raises(ValueError, match="image_size=63"):
        render(scene, 63)


def test_palette_colours_are_far_apart():
    rgb = np.array([BACKGROUND, *COLOURS.values()])
    distances = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    assert distances[~np.eye(len(rgb), dtype=bool)].min() >= 100


@pytest.mark.parametrize("image_size", [64, 96, 151, 224])
def test_read_back_recovers_the_spec(image_size):
    scenes = WORLD.scenes("train", 120, stream=f"read-{image_size}")
    for scene in scenes:
        assert read_back(render(scene, image_size)) == scene
    # every kind and size at every cell, same colour side by side (components stay apart)
    for kind, size in itertools.product(KINDS, ("small", "large")):
        for cells in (CELLS[:6], CELLS[3:]):
            scene = Scene(tuple(Shape(kind, "white", size, c) for c in cells))
            assert read_back(render(scene, image_size)) == scene


def test_read_back_reads_the_pixels_not_the_spec():
    scene = Scene((Shape("circle", "red", "large", "center"),))
    pixels = np.asarray(render(scene, 96)).copy()
    rows, cols = np.nonzero(pixels.any(-1))
    pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = COLOURS["red"]
    assert read_back(pixels) == Scene((Shape("square", "red", "large", "center"),))
    pixels[44:52, 44:52] = COLOURS["blue"]  # a second shape in the same cell
    with pytest.raises(ValueError, match="one shape per cell"):
        read_back(pixels)


def test_caption_grammar():
    scene = Scene(
        (Shape("star", "blue", "small", "center"), Shape("circle", "red", "large", "top left"))
    )
    assert (
        caption(scene) == "A large red circle in the top left and a small blue star in the center."
    )
    three = Scene((*scene.shapes, Shape("square", "green", "small", "bottom right")))
    assert caption(three) == (
        "A large red circle in the top left, a small blue star in the center and a small "
        "green square in the bottom right."
    )


def test_questions_have_correct_gold_answers():
    prompts = WORLD.prompts("train", 1200)
    types = Counter(p.type for p in prompts)
    assert set(types) == {"count", "colour", "position", "relation", "exists", "instruction"}
    for p in prompts:
        scene = p.scene
        if p.type == "count":
            noun = p.text.removeprefix("How many ").removesuffix(" are there?")
            kind, colour = p.gold["kind"], p.gold["colour"]
            assert p.answer == str(len(scene.matching(kind=kind, colour=colour)))
            assert noun == (f"{kind}s" if kind else f"{colour} shapes" if colour else "shapes")
        elif p.type == "colour":
            assert p.answer == scene.at(p.gold["cell"]).colour
        elif p.type == "position":
            assert referent(scene, scene.at(p.answer)) == p.gold["referent"]
        elif p.type == "relation":
            a, b = scene.at(p.gold["a"]), scene.at(p.gold["b"])
            assert p.answer == ("yes" if holds(a, p.gold["relation"], b) else "no")
            assert f"{referent(scene, a)} {p.gold['relation']} {referent(scene, b)}" in p.text
        elif p.type == "exists":
            present = bool(scene.matching(kind=p.gold["kind"], colour=p.gold["colour"]))
            assert p.answer == ("yes" if present else "no")
            assert (p.gold["pope"] == "present") == present
            assert (" an orange " in p.text) == (p.gold["colour"] == "orange")
        else:
            assert p.answer == caption(scene)
    answers = Counter((p.type, p.answer) for p in prompts if p.type in ("relation", "exists"))
    for kind in ("relation", "exists"):
        assert 0.4 < answers[kind, "yes"] / (answers[kind, "yes"] + answers[kind, "no"]) < 0.6


def test_colour_questions_are_unambiguous():
    for p in WORLD.prompts("train", 600):
        if p.type != "colour":
            continue
        words = p.text.removeprefix("What colour is the ").removesuffix("?")
        if words.startswith("shape in the "):
            continue  # one shape per cell
        *size, kind = words.split()
        same = [s for s in p.scene.matching(kind=kind) if not size or s.size == size[0]]
        assert len(same) == 1, p.text


def test_pope_absent_objects():
    import random

    rng = random.Random(0)
    frequency = WORLD.pair_frequency["train"]
    for scene in WORLD.scenes("train", 200):
        present = {(s.colour, s.kind) for s in scene.shapes}
        for strategy in ("random", "popular", "adversarial"):
            colour, kind = absent_pair(scene, strategy, frequency, rng)
            assert (colour, kind) not in present
            if strategy == "adversarial":
                assert any(colour == c or kind == k for c, k in present)
            if strategy == "popular":
                absent = [(c, k) for c in COLOURS for k in KINDS if (c, k) not in present]
                assert frequency[colour, kind] == max(frequency[p] for p in absent)
