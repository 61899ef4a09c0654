"""The shapes world's vocabulary and scene spec: `Shape`, `Scene`, relations, and the
compositional train / valid / heldout split of (colour, kind, cell) triples.

A scene is 1-6 shapes on a 3x3 grid, at most one per cell (so shapes never overlap). Each
shape has a kind (circle, square, triangle, star), one of 8 named colours, a size (small,
large) and a cell. Relations (left of, right of, above, below) are derived from the cells:
a is left of b when a's column is smaller, above b when a's row is smaller.

Splits. The 8 x 4 x 9 = 288 (colour, kind, cell) triples are partitioned per cell into
disjoint train / valid / heldout parts (alignlab.lab.world.partition: 60 / 15 / 25 %, seeded),
and a scene of a split uses only that split's triples. So a heldout scene never shows a
coloured shape where train showed it: "red circle in the top left" may be heldout while red
circles elsewhere and other shapes in the top left are train. Partitioning within each cell
keeps every cell usable by every split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.lab.world import SPLITS, partition

KINDS = ("circle", "square", "triangle", "star")
# Saturated colours on a black background: every pair is >= 115 apart in RGB, so the
# nearest-named-colour mask recovers each shape exactly (drawing is not anti-aliased).
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 64, 255),
    "yellow": (255, 255, 0),
    "purple": (160, 32, 240),
    "orange": (255, 140, 0),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
BACKGROUND = (0, 0, 0)
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
# Reading order: "top left", "top center", ..., "center", ..., "bottom right".
CELLS = tuple(
    "center" if (row, col) == ("middle", "center") else f"{row} {col}"
    for row in ROWS
    for col in COLUMNS
)
RELATIONS = ("left of", "right of", "above", "below")
MAX_SHAPES = 6


def cell_position(cell: str) -> tuple[int, int]:
    """(row, column) of a cell name, each 0-2."""
    index = CELLS.index(cell)
    return divmod(index, 3)


@dataclass(frozen=True)
class Shape:
    """One shape of a scene."""

    kind: str
    colour: str
    size: str
    cell: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, SIZES),
            ("cell", self.cell, CELLS),
        ):
            if value not in allowed:
                raise ValueError(f"shape {name}={value!r}: must be one of {allowed}")

    @property
    def triple(self) -> tuple[str, str, str]:
        """The (colour, kind, cell) combination the splits are disjoint in."""
        return self.colour, self.kind, self.cell

    @property
    def noun_phrase(self) -> str:
        """ "large red circle"."""
        return f"{self.size} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """1-6 shapes in distinct cells, kept in reading order, so two scenes with the same
    shapes are equal whatever order they were listed in."""

    shapes: tuple[Shape, ...]

    def __post_init__(self) -> None:
        shapes = tuple(sorted(self.shapes, key=lambda s: CELLS.index(s.cell)))
        if not 1 <= len(shapes) <= MAX_SHAPES:
            raise ValueError(f"a scene has 1-{MAX_SHAPES} shapes, got {len(shapes)}")
        if len({s.cell for s in shapes}) != len(shapes):
            raise ValueError("a scene has at most one shape per cell")
        object.__setattr__(self, "shapes", shapes)  # frozen: set the canonical order once

    def at(self, cell: str) -> Shape | None:
        return next((s for s in self.shapes if s.cell == cell), None)

    def matching(self, kind: str | None = None, colour: str | None = None) -> list[Shape]:
        """Shapes of `kind` and `colour` (None: any)."""
        return [
            s
            for s in self.shapes
            if (kind is None or s.kind == kind) and (colour is None or s.colour == colour)
        ]

    def to_record(self) -> list[dict[str, str]]:
        """JSON-serialisable spec: one {"kind", "colour", "size", "cell"} per shape."""
        return [
            {"kind": s.kind, "colour": s.colour, "size": s.size, "cell": s.cell}
            for s in self.shapes
        ]

    @classmethod
    def from_record(cls, record: Sequence[Mapping[str, Any]]) -> Scene:
        return cls(tuple(Shape(r["kind"], r["colour"], r["size"], r["cell"]) for r in record))


def holds(a: Shape, relation: str, b: Shape) -> bool:
    """Whether `a <relation> b` holds, from the two cells."""
    (row_a, col_a), (row_b, col_b) = cell_position(a.cell), cell_position(b.cell)
    return {
        "left of": col_a < col_b,
        "right of": col_a > col_b,
        "above": row_a < row_b,
        "below": row_a > row_b,
    }[relation]


def split_triples(seed: int) -> dict[str, dict[str, tuple[tuple[str, str], ...]]]:
    """{split: {cell: ((colour, kind), ...)}}: each cell's 32 colour-kind pairs cut into
    disjoint train / valid / heldout parts (module docstring)."""
    rng = random.Random(f"alignlab-shapes/{seed}/splits")
    pairs = [(colour, kind) for colour in COLOURS for kind in KINDS]
    parts = {split: {} for split in SPLITS}
    for cell in CELLS:
        for split, part in partition(pairs, rng).items():
            parts[split][cell] = tuple(sorted(part))
    return parts


def sample_scene(
    parts: Mapping[str, Sequence[tuple[str, str]]], rng: random.Random, max_shapes: int = MAX_SHAPES
) -> Scene:
    """A scene of 1-`max_shapes` shapes in random cells, each cell's shape drawn from that
    cell's allowed (colour, kind) pairs `parts[cell]`."""
    n_shapes = rng.randint(1, max_shapes)
    cells = rng.sample(CELLS, n_shapes)
    shapes = []
    for cell in cells:
        colour, kind = rng.choice(parts[cell])
        shapes.append(Shape(kind, colour, rng.choice(SIZES), cell))
    return Scene(tuple(shapes))
