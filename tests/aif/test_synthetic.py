"""The prior's ranking of response generators and its filters (ALMoST, arXiv:2305.13735):
pure functions, no model."""

import pytest

from alignlab.aif.synthetic import (
    Generator,
    SyntheticFilter,
    distinct_trigram_fraction,
    drop_reason,
    in_context_prompt,
    parse_generators,
    prior_key,
    synthetic_comparisons,
)
from alignlab.config import ConfigError
from alignlab.icl.demonstrations import Demonstration

PROMPTS = ["What is 1 plus 2?", "Name a colour."]
LONG = {  # distinct answers, long enough for the default filters
    "a": ["one plus two is three", "red is a colour"],
    "b": ["it is three I think", "maybe blue or green"],
    "c": ["no idea at all here", "colours are hard ones"],
}


def compare(generators, params, responses=LONG, filt=None):
    keys = {g.name: prior_key(g, params[g.name]) for g in generators}
    return synthetic_comparisons(
        PROMPTS, {g.name: responses[g.name] for g in generators}, keys, filt
    )


def winners(rows):
    return {(r["chosen_generator"], r["rejected_generator"]) for r in rows}


def test_bigger_model_wins_even_with_fewer_shots():
    big, small = Generator("a", "big", shots=1), Generator("b", "small", shots=3)
    rows, stats = compare([small, big], {"a": 1000, "b": 10})
    assert winners(rows) == {("a", "b")}
    assert [r["chosen"] for r in rows] == LONG["a"] and [r["rejected"] for r in rows] == LONG["b"]
    assert stats["order"] == ["a", "b"] and stats["pairs"] == 2 and stats["human_labels"] == 0


def test_more_shots_win_at_one_size():
    gens = [
        Generator("c", "m", shots=0),
        Generator("a", "m", shots=3),
        Generator("b", "m", shots=1),
    ]
    rows, stats = compare(gens, {"a": 50, "b": 50, "c": 50})
    assert winners(rows) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert stats["order"] == ["a", "b", "c"] and len(rows) == 6
    assert stats["pairs_by_generators"] == {"a > b": 2, "a > c": 2, "b > c": 2}


def test_explicit_rank_overrides_size_and_shots():
    best = Generator("c", "small", shots=0, rank=1)  # e.g. better demonstrations or prompt
    gens = [Generator("a", "big", shots=3, rank=2), best]
    rows, _ = compare(gens, {"a": 1000, "c": 10})
    assert winners(rows) == {("c", "a")}


def test_tied_generators_give_no_pair():
    gens = [Generator("a", "x", shots=2), Generator("b", "y", shots=2)]  # same size and shots
    rows, stats = compare(gens, {"a": 7, "b": 7})
    assert rows == [] and stats["tied"] == 2


def test_filters_drop_identical_short_and_repetitive_chosen():
    responses = {
        "a": ["The same  Answer here", "ok", "yes yes yes yes yes yes yes yes yes", "short one"],
        "b": ["the same answer here", "a fine answer", "a fine answer", "a much longer answer"],
    }
    keys = {"a": (2, 0), "b": (1, 0)}
    prompts = ["p1", "p2", "p3", "p4"]
    rows, stats = synthetic_comparisons(prompts, responses, keys)
    assert [r["prompt"] for r in rows] == ["p4"]  # only the last pair survives the defaults
    assert stats["dropped"] == {"identical": 1, "chosen_too_short": 1, "chosen_repetitive": 1}
    strict = SyntheticFilter(drop_shorter_chosen=True)
    rows, stats = synthetic_comparisons(prompts, responses, keys, strict)
    assert rows == [] and stats["dropped"]["chosen_shorter"] == 1
    off = SyntheticFilter(min_words=0, min_distinct_trigrams=0)
    rows, _ = synthetic_comparisons(prompts, responses, keys, off)
    assert [r["prompt"] for r in rows] == ["p2", "p3", "p4"]  # identical pairs always go


def test_drop_reason_and_trigram_fraction():
    assert distinct_trigram_fraction("a b c a b c a b c") == pytest.approx(3 / 7)
    assert distinct_trigram_fraction("one two") == 1.0
    assert drop_reason("Hello world", "hello   world", SyntheticFilter()) == "identical"
    assert drop_reason("fine answer", "x", SyntheticFilter()) is None
    assert drop_reason("fine answer", "", SyntheticFilter()) == "rejected_empty"


def test_conversational_prompts_give_conversational_rows():
    prompt = [{"role": "user", "content": "hi"}]
    rows, _ = synthetic_comparisons([prompt], {"a": ["hello there"], "b": ["go away now"]},
                                    {"a": (2, 0), "b": (1, 0)})  # fmt: skip
    assert rows[0]["prompt"] == prompt
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "hello there"}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "go away now"}]


def test_parse_generators_defaults_and_errors():
    gens = parse_generators([{"path": "runs/lab/base", "shots": 3}, {"path": "m/x"}])
    assert gens[0] == Generator("runs-lab-base-3shot", "runs/lab/base", 3)
    assert gens[1].shots == 0 and gens[1].rank is None
    cases = [
        ([{"path": "a"}, {"shots": 1}], "generators[1].path missing"),
        ([{"path": "a"}, {"path": "b", "shot": 1}], "unknown key 'generators[1].shot'"),
        ([{"path": "a", "rank": 1}, {"path": "b"}], "generators[1].rank missing"),
        ([{"path": "a", "shots": 1}, {"path": "a", "shots": 1, "name": "z"}], "same model and"),
        ([{"path": "a", "name": "n"}, {"path": "b", "name": "n"}], "generators[1].name"),
        ([{"path": "a"}], "at least two"),
        ([{"path": "a", "shots": -1}, {"path": "b"}], "generators[0].shots"),
        ([{"path": "a", "rank": 0}, {"path": "b", "rank": 1}], "generators[0].rank"),
        ([{"path": "a", "rank": 2}, {"path": "b", "rank": 2}], "nothing is better"),
        ([{"path": "a", "name": "a b"}, {"path": "b"}], "generators[0].name"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_generators(values)


def test_in_context_prompt_puts_demonstrations_before_the_query():
    demos = [Demonstration("q1", "a1"), Demonstration("q2", "a2")]
    query = [{"role": "user", "content": "real question"}]
    asked = in_context_prompt(query, demos, system="Be honest.")
    assert [m["role"] for m in asked] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert asked[0]["content"] == "Be honest." and asked[1]["content"] == "q1"
    assert asked[-1] == query[0]
    assert in_context_prompt(query, []) == query
    text = in_context_prompt("real question", demos, system="Be honest.")
    assert "Be honest." in text and text.index("q1") < text.index("q2") < text.index("real")
    assert text.endswith("# Answer:\n```\n")
