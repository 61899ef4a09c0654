"""Simulated annotators: BT parameters are recoverable, majority votes help, biases bite."""

import math
import random

import pytest

from alignlab.lab import (
    Annotator,
    LabWorld,
    agreement_with_gold,
    fit_bradley_terry,
    label_pairs,
    label_responses,
    sample_candidate,
)

N_PAIRS = 20000


def synthetic_gold(n=N_PAIRS, seed=0):
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(n)], [rng.uniform(-1, 1) for _ in range(n)]


@pytest.mark.parametrize(("temperature", "flip_rate"), [(0.2, 0.1), (0.1, 0.0), (0.4, 0.2)])
def test_temperature_and_flip_rate_are_recovered(temperature, flip_rate):
    gold_a, gold_b = synthetic_gold()
    labels = label_pairs(gold_a, gold_b, [Annotator(temperature, flip_rate)], seed=1)
    fit_t, fit_f = fit_bradley_terry(labels.gold_margins, labels.prefers_a)
    assert fit_t == pytest.approx(temperature, rel=0.12)
    assert fit_f == pytest.approx(flip_rate, abs=0.015)


def test_flip_rate_shows_on_clear_cut_pairs():
    gold_a, gold_b = synthetic_gold()
    labels = label_pairs(gold_a, gold_b, [Annotator(0.02, 0.15)], seed=2)
    clear = [(lab, m) for lab, m in zip(labels.prefers_a, labels.gold_margins) if abs(m) > 0.3]
    disagree = 1 - agreement_with_gold(*zip(*clear))
    assert disagree == pytest.approx(0.15, abs=0.015)


def test_majority_of_noisy_annotators_beats_one():
    gold_a, gold_b = synthetic_gold()
    noisy = Annotator(temperature=0.3, flip_rate=0.15)
    one = label_pairs(gold_a, gold_b, [noisy], seed=3)
    panel = label_pairs(gold_a, gold_b, [noisy] * 5, seed=3)
    assert panel.gold_agreement > one.gold_agreement + 0.05
    assert all(a < panel.gold_agreement for a in panel.annotator_agreement)
    assert (one.cost, panel.cost) == (N_PAIRS, 5 * N_PAIRS)
    # Annotators disagree with each other on a good share of pairs.
    split_votes = sum(len(set(v)) > 1 for v in panel.votes) / N_PAIRS
    assert split_votes > 0.3


def test_length_bias_makes_longer_responses_win_more():
    n = 5000
    gold = [0.5] * n  # equal gold: only the bias can decide
    long_words, short_words = [40] * n, [8] * n
    fair = label_pairs(gold, gold, [Annotator(0.2, 0.0)], 4, long_words, short_words)
    biased = label_pairs(gold, gold, [Annotator(0.2, 0.0, length_bias=0.05)], 4, long_words,
                         short_words)  # fmt: skip
    assert sum(fair.prefers_a) / n == pytest.approx(0.5, abs=0.03)
    assert sum(biased.prefers_a) / n > 0.75  # sigmoid(0.05 * 32) = 0.83
    assert math.isnan(biased.gold_agreement)  # every pair tied in gold: nothing to agree on


def test_length_bias_lowers_gold_agreement_on_real_responses():
    world = LabWorld(seed=0)
    rng = random.Random(0)
    prompts = world.prompts("train", 1500, stream="annotators")
    a = [sample_candidate(p, rng) for p in prompts]
    b = [sample_candidate(p, rng) for p in prompts]
    fair = label_responses(prompts, a, b, [Annotator(0.15, 0.0)], seed=5)
    biased = label_responses(prompts, a, b, [Annotator(0.15, 0.0, length_bias=0.3)], seed=5)
    assert fair.gold_agreement > 0.8
    assert biased.gold_agreement < fair.gold_agreement - 0.05


def test_labels_are_deterministic_given_seed():
    gold_a, gold_b = synthetic_gold(500)
    panel = [Annotator(0.3, 0.1)] * 3
    assert label_pairs(gold_a, gold_b, panel, seed=7) == label_pairs(gold_a, gold_b, panel, seed=7)
    assert (
        label_pairs(gold_a, gold_b, panel, 7).votes != label_pairs(gold_a, gold_b, panel, 8).votes
    )


def test_agreement_excludes_ties():
    assert agreement_with_gold([True, False, True], [0.5, 0.0, -0.2]) == 0.5
    with pytest.raises(ValueError):
        label_pairs([0.1], [0.2], [])
