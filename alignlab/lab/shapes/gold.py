"""Gold scores of a free-text answer about a shapes scene: correctness per question type and
CHAIR-style object hallucination (Rohrbach et al. 2018, arXiv 1809.02156).

Parsing is tolerant of case, punctuation and extra words ("There are three squares."):
numbers as digits or words ("no" / "none" = 0, "a" = 1 when nothing else is said), colour
names, cell names ("top left", "upper left", "center", "top" = "top center"), and yes / no
(the first yes-word or no-word decides; "isn't", "don't" are no-words; a hedge such as
"not sure" or "maybe" is neither).

    count         correct iff the numbers said are exactly {gold} (the number on the
                  counted noun when there is one: "2 squares and 1 circle" says 2 squares)
    colour        correct iff the colours said are exactly {gold}
    position      correct iff the cells said are exactly {gold}
    relation      correct iff the yes / no said is gold
    exists        same; a "yes" to an absent object is also a hallucinated object (POPE)
    caption,
    instruction   score = exact / n_shapes * (1 - CHAIR_i), correct iff score == 1, where
                  exact counts the scene's shapes mentioned with their colour, kind and cell
                  (and size, when one is said)

Objects mentioned. Every non-negated noun phrase "[number] [size] [colour] kind" ("two red
circles", "a star", "3 blue shapes"), optionally followed by "in the <cell>", is a mention of
`number` objects (1 without one); "no green triangle", "there isn't a star", "I don't see a
star" are negated and not mentions. A bare count answer ("3", "Three.") mentions the counted
objects, and an exists "yes" the asked object unless the answer names it. Each mention is matched
to shapes of the scene with its colour and kind (a bare kind: any colour); unmatched
objects are hallucinated:

    CHAIR_i = hallucinated objects / mentioned objects    (0 when nothing is mentioned)
    hallucinated = any hallucinated object                 (CHAIR_s over a set of answers)
    recall  = scene shapes mentioned by colour and kind / scene shapes

How we differ from CHAIR: objects are colour-kind pairs, so "a blue circle" when only a red
one exists is a hallucination, not a correct "circle"; counts are objects ("three squares"
when there are two is one hallucinated square); a wrong size or cell is not a hallucination
but makes a caption inexact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.lab.shapes.spec import CELLS, COLOURS, KINDS, Scene, Shape
from alignlab.lab.shapes.text import DESCRIPTIVE_TYPES, ShapesPrompt

NUMBER_WORDS = {
    w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
KIND_WORDS = {**{k: k for k in KINDS}, **{f"{k}s": k for k in KINDS}}
GENERIC_NOUNS = frozenset({"shape", "shapes", "object", "objects"})
SIZE_WORDS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
COLOUR_WORDS = {c: c for c in COLOURS}
# Words between a negation and its noun phrase: "there is no A", "isn't a B", "not any C".
SKIPPED = frozenset({"a", "an", "the", "any", "some", "only", "exactly", "just", "single"})
NEGATIONS = frozenset({"no", "not", "without", "never", "nor", "none", "zero", "nope"})
YES_WORDS = frozenset({"yes", "yeah", "yep", "correct", "true"})
NO_WORDS = NEGATIONS | {"false", "incorrect"}
ROW_WORDS = {"top": 0, "upper": 0, "middle": 1, "center": 1, "centre": 1, "bottom": 2, "lower": 2}
COLUMN_WORDS = {"left": 0, "center": 1, "centre": 1, "middle": 1, "right": 2}
_HEDGE = re.compile(
    r"\b(not sure|unsure|(do not|don't) know|(can't|cannot|can not) (tell|say)|maybe|perhaps)\b"
)
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|[.,;:!?]")


def tokens(text: str) -> list[str]:
    """Lower-case words, digits and clause punctuation (which ends a negation's reach)."""
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def _negates(token: str) -> bool:
    return token in NEGATIONS or token.endswith("n't")


@dataclass(frozen=True)
class Mention:
    """`count` objects of a kind and colour (None: not said), maybe with a size and cell."""

    count: int
    kind: str | None
    colour: str | None
    size: str | None = None
    cell: str | None = None


def parse_cell(words: Sequence[str], start: int) -> tuple[str, int] | None:
    """(cell name, tokens used) for a cell phrase at words[start], else None."""
    if start >= len(words):
        return None
    first = words[start]
    second = words[start + 1] if start + 1 < len(words) else ""
    if first in ROW_WORDS and second in COLUMN_WORDS:
        return CELLS[3 * ROW_WORDS[first] + COLUMN_WORDS[second]], 2
    if first in ("left", "right") and second == "of":
        return None  # a relation, not a place
    if first in ROW_WORDS:
        return CELLS[3 * ROW_WORDS[first] + 1], 1
    if first in COLUMN_WORDS:
        return CELLS[3 + COLUMN_WORDS[first]], 1
    return None


def cells_in(text: str) -> set[str]:
    words, found, i = tokens(text), set(), 0
    while i < len(words):
        parsed = parse_cell(words, i)
        if parsed:
            found.add(parsed[0])
        i += parsed[1] if parsed else 1
    return found


def colours_in(text: str) -> set[str]:
    return {COLOUR_WORDS[w] for w in tokens(text) if w in COLOUR_WORDS}


def numbers_in(text: str) -> set[int]:
    words = tokens(text)
    found = {
        int(w) if w.isdigit() else NUMBER_WORDS[w]
        for w in words
        if w.isdigit() or w in NUMBER_WORDS
    }
    if not found and {"no", "none"} & set(words):
        return {0}
    if not found and {"a", "an", "single"} & set(words):
        return {1}
    return found


def yes_no(text: str) -> str | None:
    """ "yes", "no" or None, from the first yes-word or no-word; None for a hedge ("I'm not
    sure", "maybe"), whose "not" is no answer."""
    if _HEDGE.search(text.lower().replace("\u2019", "'")):
        return None
    for word in tokens(text):
        if word in YES_WORDS:
            return "yes"
        if word in NO_WORDS or word.endswith("n't"):
            return "no"
    return None


def mentions_in(text: str) -> list[Mention]:
    """The non-negated object mentions of `text` (module docstring)."""
    words = tokens(text)
    found = []
    for i, word in enumerate(words):
        if word not in KIND_WORDS and word not in GENERIC_NOUNS:
            continue
        size = colour = count = None
        j = i - 1
        while j >= 0 and (words[j] in SIZE_WORDS or words[j] in COLOUR_WORDS):
            size = SIZE_WORDS.get(words[j], size)
            colour = COLOUR_WORDS.get(words[j], colour)
            j -= 1
        if j >= 0 and (words[j].isdigit() or words[j] in NUMBER_WORDS):
            count = int(words[j]) if words[j].isdigit() else NUMBER_WORDS[words[j]]
            j -= 1
        while j >= 0 and words[j] in SKIPPED:
            j -= 1
        # "no star", "isn't a star", "don't see a star": a negation in the two words before
        # the phrase, within its clause ("No, the star is ..." negates nothing)
        before = []
        for w in reversed(words[max(0, j - 1) : j + 1]):
            if not w[0].isalnum():
                break
            before.append(w)
        negated = count == 0 or any(map(_negates, before))
        kind = KIND_WORDS.get(word)
        if negated or (kind is None and colour is None):
            continue  # bare "shapes" names no object
        cell = None
        if words[i + 1 : i + 3] in (["in", "the"], ["at", "the"], ["on", "the"]):
            parsed = parse_cell(words, i + 3)
            cell = parsed[0] if parsed else None
        found.append(Mention(1 if count is None else count, kind, colour, size, cell))
    return found


@dataclass(frozen=True)
class ObjectCheck:
    """Mentions matched against a scene (counts of objects, module docstring)."""

    mentioned: int
    hallucinated: int
    recall: float
    exact: int
    misplaced: int
    wrong_size: int

    @property
    def chair_i(self) -> float:
        return self.hallucinated / self.mentioned if self.mentioned else 0.0


def check_objects(scene: Scene, mentions: Iterable[Mention]) -> ObjectCheck:
    """Match each mention to the scene's shapes of its colour and kind, preferring the shape
    in the named cell, of the named size, not matched yet."""
    covered: set[Shape] = set()
    exact: set[Shape] = set()
    mentioned = hallucinated = misplaced = wrong_size = 0
    for mention in mentions:
        consistent = sorted(
            scene.matching(kind=mention.kind, colour=mention.colour),
            key=lambda s: (s.cell != mention.cell, s.size != mention.size, s in covered),
        )
        taken = consistent[: mention.count]
        mentioned += mention.count
        hallucinated += mention.count - len(taken)
        for shape in taken:
            placed = mention.cell is None or shape.cell == mention.cell
            sized = mention.size is None or shape.size == mention.size
            misplaced += not placed
            wrong_size += not sized
            if mention.kind and mention.colour:
                covered.add(shape)
                if mention.cell and placed and sized:
                    exact.add(shape)
    recall = len(covered) / len(scene.shapes)
    return ObjectCheck(mentioned, hallucinated, recall, len(exact), misplaced, wrong_size)


@dataclass(frozen=True)
class ShapesGold:
    """Gold verdict on one answer. `score` is 1 / 0 for short answers and the caption score
    of the module docstring for caption / instruction; `hallucination_rate` is CHAIR_i."""

    correct: bool
    score: float
    hallucination_rate: float
    hallucinated: bool
    recall: float
    details: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def gold_score(prompt: ShapesPrompt, response: str) -> ShapesGold:
    """Gold verdict on `response` to `prompt` (module docstring)."""
    gold, answer = prompt.gold, prompt.answer
    mentions = mentions_in(response)
    details: dict[str, Any] = {}
    if prompt.type == "count":
        target = (gold.get("kind"), gold.get("colour"))
        # "2 squares and 1 circle" answers "How many squares?" with the squares' number
        said = {m.count for m in mentions if (m.kind, m.colour) == target}
        if len(said) != 1:
            said = numbers_in(response)
        correct, details["numbers"] = said == {int(answer)}, sorted(said)
        if len(said) == 1 and not mentions:  # "3": three of the counted objects
            mentions.append(Mention(next(iter(said)), *target))
    elif prompt.type == "colour":
        said = colours_in(response)
        correct, details["colours"] = said == {answer}, sorted(said)
    elif prompt.type == "position":
        said = cells_in(response)
        correct, details["cells"] = said == {answer}, sorted(said)
    elif prompt.type in ("relation", "exists"):
        said = yes_no(response)
        correct, details["yes_no"] = said == answer, said
        target = (gold.get("kind"), gold.get("colour"))
        named = any((m.kind, m.colour) == target for m in mentions)
        if prompt.type == "exists" and said == "yes" and not named:
            mentions.append(Mention(1, *target))  # "Yes." claims the asked object
    elif prompt.type not in DESCRIPTIVE_TYPES:
        raise ValueError(f"unknown question type {prompt.type!r}")
    check = check_objects(prompt.scene, mentions)
    if prompt.type in DESCRIPTIVE_TYPES:
        score = check.exact / len(prompt.scene.shapes) * (1 - check.chair_i)
        correct = score == 1.0
    else:
        score = float(correct)
    details.update(
        mentioned=check.mentioned,
        hallucinated_objects=check.hallucinated,
        exact=check.exact,
        misplaced=check.misplaced,
        wrong_size=check.wrong_size,
    )
    return ShapesGold(
        correct, round(score, 6), check.chair_i, check.hallucinated > 0, check.recall, details
    )


def summarise(scores: Sequence[ShapesGold]) -> dict[str, float]:
    """Accuracy, mean score and recall, CHAIR_i (hallucinated / mentioned objects over all
    answers, as CHAIR pools them) and CHAIR_s (share of answers with a hallucination)."""
    if not scores:
        raise ValueError("no scores to summarise")
    mentioned = sum(s.details["mentioned"] for s in scores)
    hallucinated = sum(s.details["hallucinated_objects"] for s in scores)
    n = len(scores)
    return {
        "accuracy": sum(s.correct for s in scores) / n,
        "score": sum(s.score for s in scores) / n,
        "recall": sum(s.recall for s in scores) / n,
        "chair_i": hallucinated / mentioned if mentioned else 0.0,
        "chair_s": sum(s.hallucinated for s in scores) / n,
    }
