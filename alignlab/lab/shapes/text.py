"""The shapes world's text: captions and questions from a small grammar, `ShapesPrompt`,
`ShapesWorld` (seeded scenes and prompts per split) and corrupted answers for preferences.

Grammar (every gold answer is a canonical short string):

    caption      "A large red circle in the top left and a small blue star in the center."
                 shapes in reading order; gold = this reference caption
    instruction  "Describe the scene in one sentence."           gold = the reference caption
    count        "How many squares are there?" / "... red shapes ..." / "... shapes ..."
                                                                  gold = a digit, "0" allowed
    colour       "What colour is the star?" - asked only of a unique referent ("the star",
                 "the small star", "the shape in the center")    gold = a colour name
    position     "Where is the red circle?" (a unique referent)  gold = a cell name
    relation     "Is the red circle left of the blue star?"      gold = "yes" / "no" (balanced)
    exists       "Is there a green triangle in the image?"       gold = "yes" / "no"

`exists` follows POPE (Li et al. 2023, arXiv 2305.10355): half the questions ask about a
present object, half about an absent colour-kind pair sampled `random` (any absent pair),
`popular` (the absent pair this split draws most often) or `adversarial` (an absent pair that
shares the colour or the kind of a present shape: co-occurring colour, same kind in another
colour). Unlike POPE the question wording and answers are ours, and objects are colour-kind
pairs, not COCO categories.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.lab.shapes.spec import (
    CELLS,
    COLOURS,
    KINDS,
    RELATIONS,
    SIZES,
    Scene,
    Shape,
    holds,
    sample_scene,
    split_triples,
)
from alignlab.lab.world import SPLITS, interleaved_schedule

QUESTION_TYPES = ("count", "colour", "position", "relation", "exists", "instruction", "caption")
DESCRIPTIVE_TYPES = ("caption", "instruction")  # gold: the reference caption
DEFAULT_TYPE_WEIGHTS = {
    "count": 0.2,
    "colour": 0.15,
    "position": 0.15,
    "relation": 0.15,
    "exists": 0.2,
    "instruction": 0.15,
}
CAPTION_REQUESTS = (
    "Write a caption for the image.",
    "What is in this image?",
    "Caption this picture.",
)
INSTRUCTIONS = (
    "Describe the scene in one sentence.",
    "Describe every shape in the image and where it is, in one sentence.",
    "Tell me what you see, in one sentence.",
)
POPE_STRATEGIES = ("random", "popular", "adversarial")


def plural(kind: str) -> str:
    return f"{kind}s"


def caption(scene: Scene) -> str:
    """The reference caption: every shape, reading order, "A ..., B and C."."""
    return describe(scene.shapes)


def describe(shapes: Sequence[Shape]) -> str:
    """The caption's sentence for any shapes (a corrupted caption may list 7)."""
    ordered = sorted(shapes, key=lambda s: CELLS.index(s.cell))
    phrases = [f"a {s.noun_phrase} in the {s.cell}" for s in ordered]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class ShapesPrompt:
    """A question about a scene plus what gold needs to score an answer to it.

    `gold` is JSON-serialisable (the asked target, the POPE strategy, ...); `to_record` /
    `from_record` round-trip a prompt through a JSONL row.
    """

    scene: Scene
    text: str
    type: str
    split: str
    answer: str
    gold: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def user_turn(self) -> dict[str, Any]:
        """TRL's vision user message: the image first, then the question."""
        return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.text}]}

    def to_record(self, image: str) -> dict[str, Any]:
        """TRL vision prompt-only row (image path `image`) plus the keys gold needs."""
        return {
            "images": [image],
            "prompt": [self.user_turn()],
            "type": self.type,
            "answer": self.answer,
            "split": self.split,
            "scene": self.scene.to_record(),
            "gold": dict(self.gold),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ShapesPrompt:
        text = next(p["text"] for p in record["prompt"][0]["content"] if p["type"] == "text")
        return cls(
            Scene.from_record(record["scene"]),
            text,
            record["type"],
            record["split"],
            record["answer"],
            dict(record.get("gold", {})),
        )


def assistant_turn(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


class ShapesWorld:
    """Seeded scenes and questions per split (splits: `alignlab.lab.shapes.spec`).

    Args:
        seed: determines the split of the triples, the scenes and the questions.
        type_weights: share of each question type in `prompts` (normalised).
    """

    def __init__(self, seed: int = 0, type_weights: Mapping[str, float] | None = None) -> None:
        weights = dict(type_weights or DEFAULT_TYPE_WEIGHTS)
        if set(weights) - set(QUESTION_TYPES) or sum(weights.values()) <= 0:
            raise ValueError(f"type_weights must weigh some of {QUESTION_TYPES}")
        total = sum(weights.values())
        self.seed = seed
        self.type_weights = {t: weights.get(t, 0.0) / total for t in QUESTION_TYPES}
        self.parts = split_triples(seed)
        # How often a split's scenes can show each colour-kind pair (cells allowing it):
        # POPE's "popular" absent objects are the most frequent ones.
        self.pair_frequency = {
            split: Counter(pair for pairs in cells.values() for pair in pairs)
            for split, cells in self.parts.items()
        }
        self.config = {"seed": seed, "type_weights": self.type_weights}

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def scenes(self, split: str, n: int, stream: str = "") -> list[Scene]:
        """`n` scenes of `split`, deterministic and prefix-stable."""
        self._check_split(split)
        rng = random.Random(f"alignlab-shapes/{self.seed}/scenes/{split}/{stream}")
        return [sample_scene(self.parts[split], rng) for _ in range(n)]

    def prompts(self, split: str, n: int, stream: str = "") -> list[ShapesPrompt]:
        """`n` questions of `split`, one new scene each, types mixed by `type_weights`,
        deterministic and prefix-stable (`prompts(s, 10) == prompts(s, 100)[:10]`)."""
        scenes = self.scenes(split, n, stream)
        rng = random.Random(f"alignlab-shapes/{self.seed}/questions/{split}/{stream}")
        return [
            self.ask(scene, kind, split, rng) for scene, kind in zip(scenes, self.type_schedule(n))
        ]

    def type_schedule(self, n: int) -> list[str]:
        """Types in an interleaved order whose every prefix matches the weights closely."""
        return interleaved_schedule(QUESTION_TYPES, self.type_weights, n)

    def ask(self, scene: Scene, question_type: str, split: str, rng: random.Random) -> ShapesPrompt:
        """A `question_type` question about `scene`. A position question needs a shape with
        a unique description and a relation two: scenes without fall back to counting."""
        if question_type not in QUESTION_TYPES:
            raise ValueError(f"question type must be one of {QUESTION_TYPES}")
        made = getattr(self, f"_ask_{question_type}")(scene, split, rng)
        if made is None:
            question_type, made = "count", self._ask_count(scene, split, rng)
        text, answer, gold = made
        return ShapesPrompt(scene, text, question_type, split, answer, gold)

    # --- question types: each returns (text, answer, gold) or None --------------------------

    def _ask_caption(self, scene: Scene, split: str, rng: random.Random) -> tuple:
        return rng.choice(CAPTION_REQUESTS), caption(scene), {}

    def _ask_instruction(self, scene: Scene, split: str, rng: random.Random) -> tuple:
        return rng.choice(INSTRUCTIONS), caption(scene), {}

    def _ask_count(self, scene: Scene, split: str, rng: random.Random) -> tuple:
        target = rng.choice(("kind", "colour", "kind", "all"))
        if target == "kind":
            kind = rng.choice(KINDS)  # may be absent: "0" is an answer too
            text, found = f"How many {plural(kind)} are there?", scene.matching(kind=kind)
            gold = {"kind": kind, "colour": None}
        elif target == "colour":
            colour = rng.choice([s.colour for s in scene.shapes] + list(COLOURS))
            text, found = f"How many {colour} shapes are there?", scene.matching(colour=colour)
            gold = {"kind": None, "colour": colour}
        else:
            text, found = "How many shapes are there?", scene.shapes
            gold = {"kind": None, "colour": None}
        return text, str(len(found)), gold

    def _ask_colour(self, scene: Scene, split: str, rng: random.Random) -> tuple:
        shape = rng.choice(scene.shapes)
        if len(scene.matching(kind=shape.kind)) == 1:
            referent = f"the {shape.kind}"
        elif sum(s.kind == shape.kind and s.size == shape.size for s in scene.shapes) == 1:
            referent = f"the {shape.size} {shape.kind}"
        else:
            referent = f"the shape in the {shape.cell}"
        return f"What colour is {referent}?", shape.colour, {"cell": shape.cell}

    def _ask_position(self, scene: Scene, split: str, rng: random.Random) -> tuple | None:
        described = [(s, r) for s in scene.shapes if (r := referent(scene, s))]
        if not described:
            return None
        shape, words = rng.choice(described)
        return f"Where is {words}?", shape.cell, {"referent": words}

    def _ask_relation(self, scene: Scene, split: str, rng: random.Random) -> tuple | None:
        described = [(s, r) for s in scene.shapes if (r := referent(scene, s))]
        if len(described) < 2:
            return None
        (a, words_a), (b, words_b) = rng.sample(described, 2)
        want = rng.random() < 0.5  # balance yes and no where the pair allows both
        fitting = [r for r in RELATIONS if holds(a, r, b) == want] or list(RELATIONS)
        relation = rng.choice(fitting)
        answer = "yes" if holds(a, relation, b) else "no"
        text = f"Is {words_a} {relation} {words_b}?"
        return text, answer, {"relation": relation, "a": a.cell, "b": b.cell}

    def _ask_exists(self, scene: Scene, split: str, rng: random.Random) -> tuple:
        present = sorted({(s.colour, s.kind) for s in scene.shapes})
        if rng.random() < 0.5:
            (colour, kind), strategy = rng.choice(present), "present"
        else:
            strategy = rng.choice(POPE_STRATEGIES)
            colour, kind = absent_pair(scene, strategy, self.pair_frequency[split], rng)
        answer = "yes" if (colour, kind) in present else "no"
        article = "an" if colour[0] in "aeiou" else "a"  # "an orange star"
        text = f"Is there {article} {colour} {kind} in the image?"
        return text, answer, {"colour": colour, "kind": kind, "pope": strategy}


def referent(scene: Scene, shape: Shape) -> str | None:
    """The shortest description picking out `shape` without naming its cell ("the star",
    "the red star", "the small red star"); None when no description is unique."""
    for words, same in (
        (f"the {shape.kind}", lambda s: s.kind == shape.kind),
        (f"the {shape.colour} {shape.kind}", lambda s: s.triple[:2] == shape.triple[:2]),
        (f"the {shape.noun_phrase}", lambda s: s.triple[:2] == shape.triple[:2]
                                            and s.size == shape.size),
    ):  # fmt: skip
        if sum(map(same, scene.shapes)) == 1:
            return words
    return None


def absent_pair(
    scene: Scene, strategy: str, frequency: Mapping[tuple[str, str], int], rng: random.Random
) -> tuple[str, str]:
    """An absent (colour, kind) pair drawn by a POPE strategy (module docstring)."""
    present = {(s.colour, s.kind) for s in scene.shapes}
    absent = [(c, k) for c in COLOURS for k in KINDS if (c, k) not in present]
    if strategy == "adversarial":
        colours, kinds = {c for c, _ in present}, {k for _, k in present}
        absent = [(c, k) for c, k in absent if c in colours or k in kinds] or absent
    elif strategy == "popular":
        top = max(frequency[pair] for pair in absent)
        absent = [pair for pair in absent if frequency[pair] == top]
    return rng.choice(absent)


# --- corrupted answers (preference pairs' rejected side) -------------------------------------


def corrupt(prompt: ShapesPrompt, rng: random.Random) -> tuple[str, str]:
    """(wrong answer, what was corrupted): a wrong count, colour or cell, the flipped yes/no,
    or a caption with an invented object, a shape in the wrong colour, or one left out."""
    scene, answer = prompt.scene, prompt.answer
    if prompt.type == "count":
        wrong = int(answer) + (1 if int(answer) == 0 or rng.random() < 0.5 else -1)
        return str(wrong), "wrong_count"
    if prompt.type == "colour":
        # a colour of the scene makes the harder negative: the model looked at the wrong shape
        others = sorted({s.colour for s in scene.shapes} - {answer}) or sorted(
            set(COLOURS) - {answer}
        )
        return rng.choice(others), "wrong_colour"
    if prompt.type == "position":
        # an occupied cell when there is one: the position of another shape
        others = sorted({s.cell for s in scene.shapes} - {answer})
        return rng.choice(others or [c for c in CELLS if c != answer]), "wrong_position"
    if prompt.type in ("relation", "exists"):
        flipped = "no" if answer == "yes" else "yes"
        hallucination = prompt.type == "exists" and flipped == "yes"
        return flipped, "hallucinated_object" if hallucination else "wrong_yes_no"
    return corrupt_caption(scene, rng)


def corrupt_caption(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """The reference caption with an invented object, a recoloured shape (a colour-kind pair
    the scene lacks) or, for scenes of 2+ shapes, one shape left out."""
    choices = ["hallucinated_object", "wrong_colour"] + (
        ["omission"] if len(scene.shapes) > 1 else []
    )
    kind_of_error = rng.choice(choices)
    shapes = list(scene.shapes)
    present = {(s.colour, s.kind) for s in shapes}
    if kind_of_error == "omission":
        shapes.pop(rng.randrange(len(shapes)))
        return describe(shapes), kind_of_error
    if kind_of_error == "wrong_colour":
        index = rng.randrange(len(shapes))
        shape = shapes[index]
        colours = [c for c in COLOURS if (c, shape.kind) not in present]
        shapes[index] = Shape(shape.kind, rng.choice(colours), shape.size, shape.cell)
        return describe(shapes), kind_of_error
    # A scene fills at most 6 of the 9 cells, so there is always a free one.
    free = [c for c in CELLS if scene.at(c) is None]
    colour, kind = rng.choice([(c, k) for c in COLOURS for k in KINDS if (c, k) not in present])
    shapes.append(Shape(kind, colour, rng.choice(SIZES), rng.choice(free)))
    return describe(shapes), kind_of_error
