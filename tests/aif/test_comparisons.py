"""Comparisons from any labeller: soft labels oriented to the preferred side, Copeland
best-vs-worst, a reward's Bradley-Terry probabilities, agreement with gold per family."""

import math

import pytest

from alignlab.aif.comparisons import (
    Comparisons,
    judge_comparisons,
    label_agreement,
    reward_comparisons,
)
from alignlab.judges import Judge


def test_all_pairs_orient_each_pair_to_the_preferred_side_and_skip_no_preference():
    c = Comparisons(["q"], [["x", "y", "z"]], [(0, 0, 1, 0.2), (0, 1, 2, 0.5), (0, 0, 2, 0.9)])
    rows = c.all_pairs()
    assert [(r["chosen"], r["rejected"], r["chosen_probability"]) for r in rows] == [
        ("y", "x", pytest.approx(0.8)),
        ("x", "z", 0.9),
    ]


def test_best_vs_worst_is_copeland_with_probability_tie_breaks():
    # x beats y and z; y beats z narrowly: x best, z worst
    c = Comparisons(["q"], [["x", "y", "z"]], [(0, 0, 1, 0.7), (0, 0, 2, 0.6), (0, 1, 2, 0.55)])
    assert c.best_vs_worst() == [{"prompt": "q", "chosen": "x", "rejected": "z"}]
    # a 3-cycle with equal strengths: no sample is better, the prompt is dropped
    cycle = Comparisons(["q"], [["x", "y", "z"]], [(0, 0, 1, 0.7), (0, 1, 2, 0.7), (0, 0, 2, 0.3)])
    assert cycle.best_vs_worst() == []
    # conversational prompts give conversational rows
    chat = Comparisons([[{"role": "user", "content": "q"}]], [["x", "y"]], [(0, 0, 1, 0.1)])
    assert chat.best_vs_worst()[0]["chosen"] == [{"role": "assistant", "content": "y"}]


def test_reward_comparisons_drop_duplicates_and_use_bradley_terry():
    def length(prompts, responses, extras=None):
        return [float(len(r)) for r in responses]

    c = reward_comparisons(length, ["p1", "p2"], [["aa", "a", "aa", " "], ["same", "same"]])
    assert c.texts == [["aa", "a"]] and c.origin == [0]  # p2 has one distinct sample
    assert c.pairs == [(0, 0, 1, pytest.approx(1 / (1 + math.exp(-1))))]
    assert c.rewards == [[2.0, 1.0]]


class ByLength(Judge):
    """P(first preferred) = 1 when the first is longer, plus a position bias on ties."""

    def verdict_probs(self, conversations, verdicts):
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            first = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
            second = text.split("[Response B]\n")[1].split("\n\nWhich")[0]
            p = 0.5 + 0.4 * ((len(first) > len(second)) - (len(first) < len(second)))
            out.append(
                [p, 1 - p] if verdicts == ("A", "B") else [1 / len(verdicts)] * len(verdicts)
            )
        return out


def test_judge_comparisons_and_agreement_per_family():
    prompts = ["p1", "p2"]
    samples = [["long answer", "short"], ["xx", "x"]]
    c = judge_comparisons(ByLength(), prompts, samples)
    assert [p for *_, p in c.pairs] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert c.stats["judge_position_bias"] == pytest.approx(0.0)

    def gold(prompts, responses, extras=None):  # prefers short on p2 only
        return [len(r) if p == "p1" else -len(r) for p, r in zip(prompts, responses)]

    extras = [{"family": "a"}, {"family": "b"}]
    got = label_agreement(c, gold, extras)
    assert got == {
        "a": {"agreement": 1.0, "pairs": 1},
        "all": {"agreement": 0.5, "pairs": 2},
        "b": {"agreement": 0.0, "pairs": 1},
    }
