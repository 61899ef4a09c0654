"""Order-swap averaging (Zheng et al. 2023; Lee et al. 2023): a judge that only looks at
positions gets 0.5 and its bias measured; a judge that prefers content is antisymmetric."""

import math

import pytest
from judging import StubJudge

from alignlab.judges import measure_position_bias
from alignlab.judges.base import expected_rating, pairwise_stats, swap_averaged, verdict_key

PROMPTS = ["q1", "q2", "q3", "q4"]
LONG = ["a long answer", "xx", "same", "the longest answer of all"]
SHORT = ["short", "x", "same", "mid"]


def test_a_judge_that_only_looks_at_position_gets_one_half_and_its_bias_measured():
    judge = StubJudge(position_logit=math.log(3), content_weight=0.0)  # P("A") = 3/4 always
    assert judge.compare(PROMPTS, LONG, SHORT) == [0.5] * 4
    stats = judge.last_stats
    # P(first preferred) is 3/4 in both orders: 1/4 above an even 1/2
    assert stats.position_bias == pytest.approx(0.25, abs=1e-15)
    assert stats.first_preferred == pytest.approx([0.75] * 4)
    assert stats.first_preferred_swapped == pytest.approx([0.75] * 4)
    assert stats.consistency == 0.0  # "A" wins in both orders: the winner flips with the swap
    assert judge.calls == 1  # both orders in one call (one batch for a local judge)
    favours_second = StubJudge(position_logit=-math.log(3), content_weight=0.0)
    favours_second.compare(PROMPTS, LONG, SHORT)
    assert favours_second.last_stats.position_bias == pytest.approx(-0.25, abs=1e-15)


def test_a_content_judge_swapped_gives_one_minus_p_and_no_bias():
    judge = StubJudge(position_logit=0.0, content_weight=0.3)
    p = judge.compare(PROMPTS, LONG, SHORT)
    swapped = judge.compare(PROMPTS, SHORT, LONG)
    assert swapped == pytest.approx([1 - x for x in p], abs=1e-15)
    expected = [1 / (1 + math.exp(-0.3 * (len(a) - len(b)))) for a, b in zip(LONG, SHORT)]
    assert p == pytest.approx(expected, abs=1e-15)
    assert p[2] == 0.5  # identical responses
    assert judge.last_stats.position_bias == pytest.approx(0.0, abs=1e-15)
    assert judge.last_stats.consistency == 1.0


def test_swap_averaging_removes_a_bias_added_to_a_content_judge():
    z = 0.4
    judge = StubJudge(position_logit=z, content_weight=0.3)
    p = judge.compare(PROMPTS, LONG, SHORT)
    # by hand: P_A(a, b) = s(d + z), P_A(b, a) = s(-d + z), averaged
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    d = [0.3 * (len(a) - len(b)) for a, b in zip(LONG, SHORT)]
    assert p == pytest.approx([(s(x + z) + 1 - s(-x + z)) / 2 for x in d], abs=1e-15)
    bias = sum((s(x + z) + s(-x + z)) / 2 for x in d) / len(d) - 0.5
    stats = measure_position_bias(judge, PROMPTS, LONG, SHORT)
    assert stats.position_bias == pytest.approx(bias, abs=1e-15) and stats.position_bias > 0
    assert stats.n == 4


def test_pairwise_stats_and_swap_by_hand():
    forward, swapped = [0.9, 0.6, 0.5, 0.2], [0.3, 0.7, 0.5, 0.6]
    assert swap_averaged(forward, swapped) == pytest.approx([0.8, 0.45, 0.5, 0.3])
    stats = pairwise_stats(forward, swapped)
    assert stats.position_bias == pytest.approx((0.6 + 0.65 + 0.5 + 0.4) / 4 - 0.5)
    # item 0: a wins both times; 1: "A" both times; 2: a tie both times; 3: b wins both times
    assert stats.consistency == pytest.approx(3 / 4)


def test_score_is_the_expected_rating_and_lengths_are_checked():
    judge = StubJudge()
    # the stub puts all mass on rating len(response) % 5 + 1
    assert judge.score(["q", "q"], ["abc", "abcdefg"]) == [4.0, 3.0]
    assert expected_rating([0.5, 0.0, 0.0, 0.0, 0.5], ("1", "2", "3", "4", "5")) == 3.0
    assert expected_rating([0.7, 0.3], ("Yes", "No")) == 0.7
    with pytest.raises(ValueError, match="1 responses_b for 2 prompts"):
        judge.compare(["q", "q"], ["a", "b"], ["c"])
    with pytest.raises(TypeError, match="responses\\[0\\] is a int"):
        judge.score(["q"], [3])
    assert judge.compare([], [], []) == [] and judge.last_stats.n == 0


def test_verdict_key_drops_spaces_and_framing():
    assert {verdict_key(t) for t in (" A", "A", "A.", "[[A]]", "**A**", "A\n")} == {"A"}
    assert verdict_key(" 10") == "10" and verdict_key("Yes,") == "Yes"
