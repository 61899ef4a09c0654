"""The shapes world: a seeded vision-language world of coloured shapes on a 3x3 grid, with
captions and questions from a grammar, gold scores of answers (correctness per question type,
CHAIR-style hallucination, recall) and TRL vision datasets. Pure Python, Pillow, numpy and
scipy: no model code. See docs/shapes.md.

    spec.py    Shape, Scene, the vocabulary, relations, the compositional splits
    render.py  drawing with PIL and reading a scene back from the pixels
    text.py    the grammar, ShapesPrompt, ShapesWorld (scenes and prompts per split)
    gold.py    parsing answers and scoring them (ShapesGold)
    export.py  images + JSONL in TRL's vision formats (`alignlab lab export --world shapes`)
"""

from alignlab.lab.shapes.export import export_shapes
from alignlab.lab.shapes.gold import Mention, ShapesGold, gold_score, mentions_in, summarise
from alignlab.lab.shapes.render import DEFAULT_IMAGE_SIZE, png_bytes, read_back, render
from alignlab.lab.shapes.spec import CELLS, COLOURS, KINDS, RELATIONS, SIZES, Scene, Shape
from alignlab.lab.shapes.text import QUESTION_TYPES, ShapesPrompt, ShapesWorld, caption, corrupt

__all__ = [
    "CELLS",
    "COLOURS",
    "DEFAULT_IMAGE_SIZE",
    "KINDS",
    "QUESTION_TYPES",
    "RELATIONS",
    "SIZES",
    "Mention",
    "Scene",
    "Shape",
    "ShapesGold",
    "ShapesPrompt",
    "ShapesWorld",
    "caption",
    "corrupt",
    "export_shapes",
    "gold_score",
    "mentions_in",
    "png_bytes",
    "read_back",
    "render",
    "summarise",
]
