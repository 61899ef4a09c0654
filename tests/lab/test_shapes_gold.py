"""Gold scores of answers about a shapes scene: each kind of mistake is caught on its own."""

import random

import pytest

from alignlab.lab.shapes import Scene, Shape, ShapesPrompt, ShapesWorld, caption, corrupt
from alignlab.lab.shapes.gold import (
    Mention,
    cells_in,
    gold_score,
    mentions_in,
    numbers_in,
    summarise,
    yes_no,
)

SCENE = Scene(
    (
        Shape("circle", "red", "large", "top left"),
        Shape("star", "blue", "small", "center"),
        Shape("square", "green", "small", "bottom right"),
        Shape("square", "green", "large", "top right"),
    )
)


def ask(question_type, answer, **gold):
    return ShapesPrompt(SCENE, "question?", question_type, "valid", answer, gold)


COUNT = ask("count", "2", kind="square", colour=None)
COLOUR = ask("colour", "blue", cell="center")
POSITION = ask("position", "top left", referent="the red circle")
RELATION = ask("relation", "yes", relation="left of", a="top left", b="center")
ABSENT = ask("exists", "no", colour="yellow", kind="triangle", pope="random")
PRESENT = ask("exists", "yes", colour="blue", kind="star", pope="present")
CAPTION = ask("caption", caption(SCENE))


def test_parsers_are_tolerant():
    assert numbers_in("There are THREE squares.") == {3}
    assert numbers_in("3") == {3} and numbers_in("none") == {0} and numbers_in("just a star") == {1}
    assert cells_in("It's in the upper-left corner!") == {"top left"}
    assert cells_in("center") == {"center"} and cells_in("Bottom right.") == {"bottom right"}
    assert cells_in("It is left of the star") == set()  # a relation, not a cell
    assert yes_no("Yes, it is.") == "yes" and yes_no("NO.") == "no"
    assert yes_no("There isn't one.") == "no" and yes_no("Maybe.") is None
    assert mentions_in("two large red circles in the top left") == [
        Mention(2, "circle", "red", "large", "top left")
    ]
    assert mentions_in("There is no green triangle and I don't see a star.") == []
    assert mentions_in("No, the red circle is above it.") == [Mention(1, "circle", "red")]
    assert mentions_in("three shapes") == []  # names no object


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        (COUNT, "2"),
        (COUNT, "There are two squares."),
        (COUNT, "I see 2 squares and 1 circle."),
        (COLOUR, "The star is blue."),
        (POSITION, "It is in the top left."),
        (RELATION, "Yes, the red circle is left of the blue star."),
        (ABSENT, "No, there is no yellow triangle."),
        (PRESENT, "yes"),
        (CAPTION, caption(SCENE)),
        (CAPTION, caption(SCENE).upper().replace(",", " ")),
    ],
)
def test_a_correct_answer_scores_correct(prompt, answer):
    score = gold_score(prompt, answer)
    assert score.correct and score.score == 1.0
    assert not score.hallucinated and score.hallucination_rate == 0.0


def test_a_wrong_count_is_wrong():
    assert not gold_score(COUNT, "There are three squares.").correct
    assert not gold_score(COUNT, "1").correct
    assert not gold_score(COUNT, "2 or 3").correct  # hedging over numbers


def test_counting_too_many_hallucinates_the_extra_objects():
    score = gold_score(COUNT, "3")
    assert score.hallucinated and score.hallucination_rate == pytest.approx(1 / 3)
    assert not gold_score(COUNT, "1").hallucinated  # too few: wrong, nothing invented


def test_a_wrong_colour_is_wrong():
    assert not gold_score(COLOUR, "The star is red.").correct
    assert not gold_score(COLOUR, "blue or red").correct


def test_a_wrong_position_is_wrong():
    assert not gold_score(POSITION, "In the top right.").correct
    assert not gold_score(POSITION, "The center.").correct


def test_a_wrong_yes_no_is_wrong():
    assert not gold_score(RELATION, "No, it is not.").correct
    assert not gold_score(PRESENT, "No.").correct
    assert not gold_score(ABSENT, "I am not sure.").correct  # a hedge, not a "no"
    assert not gold_score(ABSENT, "Maybe not.").correct
    assert not gold_score(RELATION, "Maybe.").correct


def test_yes_to_an_absent_object_is_a_hallucination():
    for answer in ("Yes.", "Yes, there is a yellow triangle."):
        score = gold_score(ABSENT, answer)
        assert not score.correct and score.hallucinated and score.hallucination_rate == 1.0
    assert not gold_score(PRESENT, "No.").hallucinated  # a miss, not an invention


def test_an_invented_object_in_a_caption():
    invented = caption(SCENE)[:-1] + " and a small yellow triangle in the bottom left."
    score = gold_score(CAPTION, invented)
    assert score.hallucinated and score.hallucination_rate == pytest.approx(1 / 5)
    assert not score.correct and score.recall == 1.0
    assert score.details["hallucinated_objects"] == 1 and score.details["mentioned"] == 5


def test_a_recoloured_object_is_an_invented_one():
    score = gold_score(CAPTION, caption(SCENE).replace("red circle", "purple circle"))
    assert score.hallucinated and score.recall == 0.75 and not score.correct


def test_a_missing_object_lowers_recall():
    two = "A large red circle in the top left and a small blue star in the center."
    score = gold_score(CAPTION, two)
    assert score.recall == 0.5 and score.score == 0.5 and not score.correct
    assert not score.hallucinated


def test_a_misplaced_or_missized_object_makes_a_caption_inexact():
    misplaced = gold_score(CAPTION, caption(SCENE).replace("top left", "bottom left"))
    assert not misplaced.correct and misplaced.details["misplaced"] == 1
    assert misplaced.recall == 1.0 and not misplaced.hallucinated
    missized = gold_score(CAPTION, caption(SCENE).replace("large red", "small red"))
    assert not missized.correct and missized.details["wrong_size"] == 1
    unplaced = gold_score(CAPTION, "A red circle, a blue star and two green squares.")
    assert unplaced.recall == 1.0 and not unplaced.correct  # where they are is part of it


def test_counts_in_captions_are_objects():
    score = gold_score(CAPTION, "There are three green squares.")
    assert score.details["mentioned"] == 3 and score.details["hallucinated_objects"] == 1


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_gold_answers_score_correct_and_corrupted_ones_wrong(split):
    world, rng = ShapesWorld(seed=3), random.Random(0)
    seen = set()
    for prompt in world.prompts(split, 500):
        assert gold_score(prompt, prompt.answer).correct, prompt
        wrong, corruption = corrupt(prompt, rng)
        score = gold_score(prompt, wrong)
        assert not score.correct, (prompt, wrong)
        if corruption == "hallucinated_object":
            assert score.hallucinated
        seen.add(corruption)
    assert seen == {
        "wrong_count", "wrong_colour", "wrong_position", "wrong_yes_no",
        "hallucinated_object", "omission",
    }  # fmt: skip


def test_summary_pools_objects_like_chair():
    scores = [gold_score(COUNT, "3"), gold_score(COUNT, "2"), gold_score(ABSENT, "yes")]
    summary = summarise(scores)
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["chair_i"] == pytest.approx(2 / 6)  # (1 + 0 + 1) of (3 + 2 + 1) objects
    assert summary["chair_s"] == pytest.approx(2 / 3)


def test_a_count_names_the_objects_it_counts():
    stars = ask("count", "1", kind="star", colour=None)
    score = gold_score(stars, "There are three squares.")  # the squares, not three stars
    assert not score.correct
    assert score.details["mentioned"] == 3 and score.details["hallucinated_objects"] == 1
    assert gold_score(stars, "Three.").details["hallucinated_objects"] == 2
